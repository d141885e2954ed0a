import pytest

from autosink_platform.pipelines.spec import PromotionPolicy


def test_first_release_always_becomes_champion():
    assert PromotionPolicy().promotes(None) and PromotionPolicy(mode="auto").promotes(None)


@pytest.mark.parametrize(
    "policy,delta,promoted",
    [
        (PromotionPolicy(), 0.2, False),  # manual: a person decides, however good the candidate
        (PromotionPolicy(mode="auto", margin=0.01), 0.02, True),
        (PromotionPolicy(mode="auto", margin=0.01), 0.01, True),  # exactly the margin counts
        (PromotionPolicy(mode="auto", margin=0.05), 0.02, False),
        (PromotionPolicy(mode="auto", margin=0.0), -0.001, False),  # never a regression
    ],
)
def test_auto_promotion_needs_the_margin(policy, delta, promoted):
    assert policy.promotes({"delta": delta}) is promoted


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="manual' or 'auto'"):
        PromotionPolicy(mode="sometimes")


def test_auto_promotion_needs_every_slice_to_hold():
    policy = PromotionPolicy(mode="auto", margin=0.01)
    assert policy.promotes({"delta": 0.05, "slice_regressions": []})
    dim = {"slice": "lighting", "group": "dim", "metric": "accuracy", "candidate": 0.80, "champion": 0.90, "n": 120}
    assert not policy.promotes({"delta": 0.05, "slice_regressions": [dim]})
