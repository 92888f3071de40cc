"""Require a cosign signature, verified by the proxy with the trust named in the settings, in
Python. Attachments (signatures, attestations, SBOMs) are admitted by the proxy itself when a
policy asks to verify them: it recognises them by their content.

Settings: {"trust": "release-keys"} and/or {"keys": ["-----BEGIN PUBLIC KEY-----..."]},
optionally "threshold": 2.
"""
import json

import wit_world
from wit_world.imports import types
from componentize_py_types import Err


def settings(text: str) -> types.Requirements:
    s = json.loads(text if text.strip() else "{}")
    unknown = set(s) - {"trust", "keys", "threshold"}
    if unknown:
        raise ValueError(f"settings: unknown field {sorted(unknown)[0]!r}")
    keys = s.get("keys", [])
    if "trust" not in s and not keys:
        raise ValueError('settings: name a "trust" or give "keys"')
    trust = [s["trust"]] if "trust" in s else []
    return types.Requirements(
        trust=trust,
        keys=keys,
        identities=[],
        attestations=[],
        threshold=s.get("threshold", 0),
        signed_identity=None,
    )


class WitWorld(wit_world.WitWorld):
    def metadata(self) -> types.PolicyMetadata:
        return types.PolicyMetadata(
            name="require-signature-py", version="0.1.0", capabilities=["verify"]
        )

    def validate_settings(self, text: str) -> None:
        try:
            settings(text)
        except ValueError as e:
            raise Err(str(e))

    def evaluate(self, request: types.Request, text: str) -> types.Decision:
        try:
            return types.Decision_Verify(settings(text))
        except ValueError as e:
            return types.Decision_Reject(str(e))
