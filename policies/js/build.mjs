// Builds a JavaScript policy into a component of the `policy` world:
// node build.mjs SOURCE.js OUT.wasm, run from a directory holding the `wit/` folder, with
// @bytecodealliance/componentize-js installed beside this file (policies/build-guests.sh does both).
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";

const [source, out] = process.argv.slice(2);
const { component } = await componentize({
  sourcePath: source,
  witPath: "wit",
  worldName: "policy",
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
