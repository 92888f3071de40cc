// {{name}}: rejects the tags named in its settings, admits everything else.

function settings(text) {
  const s = JSON.parse(text && text.trim() ? text : "{}");
  for (const key of Object.keys(s)) {
    if (key !== "tags") throw `settings: unknown field "${key}"`;
  }
  if (s.tags !== undefined && !(Array.isArray(s.tags) && s.tags.every((t) => typeof t === "string"))) {
    throw "settings: tags must be a list of strings";
  }
  return { tags: s.tags ?? ["latest"] };
}

export function metadata() {
  return { name: "{{name}}", version: "0.1.0", capabilities: [] };
}

export function validateSettings(text) {
  settings(text);
}

export function evaluate(request, text) {
  let s;
  try {
    s = settings(text);
  } catch (e) {
    return { tag: "reject", val: String(e) };
  }
  if (s.tags.includes(request.reference)) {
    return { tag: "reject", val: `the tag "${request.reference}" may not be used` };
  }
  return { tag: "admit" };
}
