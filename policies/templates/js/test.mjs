// The policy's logic, tested in Node.js: `npm test`.
import assert from "node:assert/strict";
import { evaluate, validateSettings } from "./policy.js";

const image = (reference) => ({ namespace: "docker.io", repository: "library/app", reference });

assert.equal(evaluate(image("latest"), "{}").tag, "reject");
assert.equal(evaluate(image("main"), '{"tags":["main"]}').tag, "reject");
assert.equal(evaluate(image("1.2.3"), "{}").tag, "admit");
assert.throws(() => validateSettings('{"tag":"x"}'));
console.log("ok: {{name}} decides as expected");
