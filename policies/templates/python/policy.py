"""{{name}}: rejects the tags named in its settings, admits everything else."""
import json

import wit_world
from wit_world.imports import types
from componentize_py_types import Err


def settings(text: str) -> list:
    s = json.loads(text if text.strip() else "{}")
    unknown = set(s) - {"tags"}
    if unknown:
        raise ValueError(f"settings: unknown field {sorted(unknown)[0]!r}")
    tags = s.get("tags", ["latest"])
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise ValueError("settings: tags must be a list of strings")
    return tags


class WitWorld(wit_world.WitWorld):
    def metadata(self) -> types.PolicyMetadata:
        return types.PolicyMetadata(name="{{name}}", version="0.1.0", capabilities=[])

    def validate_settings(self, text: str) -> None:
        try:
            settings(text)
        except ValueError as e:
            raise Err(str(e))

    def evaluate(self, request: types.Request, text: str) -> types.Decision:
        try:
            tags = settings(text)
        except ValueError as e:
            return types.Decision_Reject(str(e))
        if request.reference in tags:
            return types.Decision_Reject(f'the tag "{request.reference}" may not be used')
        return types.Decision_Admit()
