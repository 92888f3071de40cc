"""The Python example policies' logic, tested with the world's Python bindings (made by
componentize-py; policies/test-guests.sh runs it). Outside python/ itself: policies/build-guests.sh
builds every module there."""
import unittest

from componentize_py_types import Err
from wit_world.imports import types

import deny_tags
import require_signature


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


class DenyTags(unittest.TestCase):
    def test_latest_by_default_and_the_configured_tags(self):
        world = deny_tags.WitWorld()
        refused = world.evaluate(image("latest"), "")
        self.assertIsInstance(refused, types.Decision_Reject)
        self.assertIn("is mutable; pull by digest", refused.value)
        self.assertIsInstance(world.evaluate(image("main"), '{"tags":["main"]}'), types.Decision_Reject)
        self.assertIsInstance(world.evaluate(image("latest"), '{"tags":["main"]}'), types.Decision_Admit)
        self.assertIsInstance(world.evaluate(image("1.2.3"), "{}"), types.Decision_Admit)

    def test_bad_settings_keep_the_module_from_loading(self):
        for bad, why in [('{"tag":"x"}', "unknown field 'tag'"), ('{"tags":"latest"}', "list of strings")]:
            with self.assertRaises(Err) as refused:
                deny_tags.WitWorld().validate_settings(bad)
            self.assertIn(why, str(refused.exception.value))
        deny_tags.WitWorld().validate_settings('{"tags":["main"]}')


class RequireSignature(unittest.TestCase):
    def test_images_verify_with_the_named_trust(self):
        decision = require_signature.WitWorld().evaluate(image("v1"), '{"trust":"release-keys","threshold":2}')
        self.assertIsInstance(decision, types.Decision_Verify)
        self.assertEqual(decision.value.trust, ["release-keys"])
        self.assertEqual(decision.value.threshold, 2)
        self.assertIsNone(decision.value.signed_identity)

    def test_settings_need_trust_or_keys(self):
        for bad, why in [("{}", 'name a "trust"'), ('{"trust":"t","colour":1}', "unknown field 'colour'")]:
            with self.assertRaises(Err) as refused:
                require_signature.WitWorld().validate_settings(bad)
            self.assertIn(why, str(refused.exception.value))
        require_signature.WitWorld().validate_settings('{"trust":"t"}')


if __name__ == "__main__":
    unittest.main()
