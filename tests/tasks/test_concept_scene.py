"""A concept's own scene options (its manifest ``scene``) in what its scene masks depend on."""

from dinoseg_core.config import InsidConfig, SceneConfig
from tasks.concepts import ConceptSet, PreparedConcept
from tasks.runtime import BackboneSpec


def _concepts(scene=SceneConfig(), given=(), water_scene=(("global_weight", 0.2),)):
    roof = PreparedConcept("roof", InsidConfig(tau=0.9), "key-roof", "hash-roof")
    water = PreparedConcept("water", InsidConfig(tau=0.9), "key-water", "hash-water", (), water_scene)
    return ConceptSet(BackboneSpec("random:tiny@0"), "fingerprint", True, (roof, water), scene, (3, 2, 1),
                      scene_given=given)


def test_a_concepts_global_weight_changes_only_its_own_scene_masks():
    plain = _concepts(water_scene=()).methods("scene")
    own = _concepts().methods("scene")
    assert own["water"].config["scene"]["global_weight"] == 0.2 and own["roof"].config["scene"]["global_weight"] == 0.5
    assert own["roof"].config_digest == plain["roof"].config_digest  # the other concept stays up to date
    assert own["water"].config_digest != plain["water"].config_digest
    assert own["water"].reference_set_hash == plain["water"].reference_set_hash
    tiles = _concepts().methods("tile")  # tiles do not depend on scene options
    assert tiles["water"].config_digest == _concepts(water_scene=()).methods("tile")["water"].config_digest


def test_the_runs_own_scene_options_win_over_a_concepts():
    run = SceneConfig(global_weight=0.7, overlap=32)
    given = _concepts(run, given=("global_weight", "overlap")).methods("scene")
    assert given["water"].config["scene"]["global_weight"] == 0.7
    defaulted = _concepts(run.replace(global_weight=0.5), given=("overlap",)).methods("scene")
    assert defaulted["water"].config["scene"] == {**run.to_dict(), "global_weight": 0.2}
