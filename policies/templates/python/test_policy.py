"""The policy's logic, tested with the world's Python bindings: `./test.sh`."""
import unittest
from dataclasses import replace

from componentize_py_types import Err
from wit_world.imports import types

import policy


def image(reference: str) -> types.Request:
    manifest = types.ManifestInfo(
        media_type="application/vnd.oci.image.manifest.v1+json", config=None, layers=[],
        manifests=[], annotations=[], subject=None, artifact_type=None,
    )
    client = types.Client(address="127.0.0.1", user=None, user_agent=None)
    return types.Request(
        operation=types.Operation.PULL, namespace="docker.io", repository="library/app",
        reference=reference, digest="sha256:" + "0" * 64, media_type=manifest.media_type,
        size=2, manifest=manifest, attachments=[], attaches_to=None, client=client,
    )


class Decisions(unittest.TestCase):
    def test_the_named_tags_are_rejected(self):
        world = policy.WitWorld()
        self.assertIsInstance(world.evaluate(image("latest"), "{}"), types.Decision_Reject)
        self.assertIsInstance(world.evaluate(image("main"), '{"tags":["main"]}'), types.Decision_Reject)
        self.assertIsInstance(world.evaluate(image("1.2.3"), "{}"), types.Decision_Admit)

    def test_unknown_settings_keep_the_module_from_loading(self):
        with self.assertRaises(Err):
            policy.WitWorld().validate_settings('{"tag":"x"}')


if __name__ == "__main__":
    unittest.main()
