// The JavaScript example policies' logic, tested in Node.js (policies/test-guests.sh runs it).
import assert from "node:assert/strict";
import * as denyTags from "./deny-tags.js";
import * as requireSignature from "./require-signature.js";

const image = (reference) => ({ namespace: "docker.io", repository: "library/app", reference });

// deny-tags: latest by default, the configured tags otherwise; bad settings refused
assert.equal(denyTags.evaluate(image("latest"), "{}").tag, "reject");
assert.match(denyTags.evaluate(image("latest"), "").val, /is mutable; pull by digest/);
assert.equal(denyTags.evaluate(image("main"), '{"tags":["main"]}').tag, "reject");
assert.equal(denyTags.evaluate(image("latest"), '{"tags":["main"]}').tag, "admit");
assert.equal(denyTags.evaluate(image("1.2.3"), "{}").tag, "admit");
assert.throws(() => denyTags.validateSettings('{"tag":"x"}'), /unknown field "tag"/);
assert.throws(() => denyTags.validateSettings('{"tags":"latest"}'), /tags must be a list of strings/);
assert.doesNotThrow(() => denyTags.validateSettings('{"tags":["main"]}'));

// require-signature: asks the host to verify with the named trust or keys
const verify = requireSignature.evaluate(image("v1"), '{"trust":"release-keys","threshold":2}');
assert.equal(verify.tag, "verify");
assert.deepEqual(verify.val.trust, ["release-keys"]);
assert.equal(verify.val.threshold, 2);
assert.equal(requireSignature.evaluate(image("v1"), "{}").tag, "reject");
assert.throws(() => requireSignature.validateSettings("{}"), /name a "trust" or give "keys"/);
assert.throws(() => requireSignature.validateSettings('{"trust":"t","colour":1}'), /unknown field "colour"/);
assert.doesNotThrow(() => requireSignature.validateSettings('{"trust":"t"}'));
console.log("ok: the JavaScript example policies decide as expected");
