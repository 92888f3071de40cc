// Require a cosign signature, verified by the proxy with the trust named in the settings, in
// JavaScript. Attachments (signatures, attestations, SBOMs) are admitted by the proxy itself
// when a policy asks to verify them: it recognises them by their content.
//
// Settings: {"trust": "release-keys"} and/or {"keys": ["-----BEGIN PUBLIC KEY-----..."]},
// optionally "threshold": 2.

function settings(text) {
  const s = JSON.parse(text && text.trim() ? text : "{}");
  for (const key of Object.keys(s)) {
    if (!["trust", "keys", "threshold"].includes(key)) throw `settings: unknown field "${key}"`;
  }
  const keys = s.keys ?? [];
  if (s.trust === undefined && keys.length === 0) throw 'settings: name a "trust" or give "keys"';
  return { trust: s.trust === undefined ? [] : [s.trust], keys, threshold: s.threshold ?? 0 };
}

export function metadata() {
  return { name: "require-signature-js", version: "0.1.0", capabilities: ["verify"] };
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
  return {
    tag: "verify",
    val: {
      trust: s.trust,
      keys: s.keys,
      identities: [],
      attestations: [],
      threshold: s.threshold,
      signedIdentity: undefined,
    },
  };
}
