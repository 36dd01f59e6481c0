"""Gates: hand-computed heuristic, fixed weights, absent tasks, uninformative shares, refused modes."""
import math

import pytest

from gems import GateConfig, TaskSignals, compute_gates


def test_heuristic_gates_match_a_hand_computation():
    signals = TaskSignals(n_rec=30, n_search=10, loss_rec=2.0, loss_search=6.0, grad_norm_rec=3.0,
                          grad_norm_search=1.0)
    g_rec, g_search = compute_gates(GateConfig(), signals)
    # 0.4 * 2/8 (loss) + 0.4 * 3/4 (grad norm) + 0.2 * 30/40 (count) = 0.1 + 0.3 + 0.15
    assert g_rec == pytest.approx(0.55)
    assert g_search == pytest.approx(0.45)
    assert g_rec + g_search == pytest.approx(1.0)
    # a mix that is not normalised is divided by its sum: (1 * 0.25 + 1 * 0.75 + 0) / 2
    assert compute_gates(GateConfig(mix=(1.0, 1.0, 0.0)), signals)[0] == pytest.approx(0.5)


def test_uninformative_shares_count_as_even():
    signals = TaskSignals(n_rec=10, n_search=30, loss_rec=math.nan, loss_search=1.0, grad_norm_rec=0.0,
                          grad_norm_search=0.0)
    # loss and grad-norm shares fall back to 0.5; count share 10/40
    assert compute_gates(GateConfig(), signals)[0] == pytest.approx(0.4 * 0.5 + 0.4 * 0.5 + 0.2 * 0.25)


@pytest.mark.parametrize("config", [GateConfig(), GateConfig(mode="fixed", rec_weight=0.3)])
def test_fixed_gates_and_absent_tasks(config):
    both = TaskSignals(5, 5, 1.0, 1.0, 1.0, 1.0)
    if config.mode == "fixed":
        assert compute_gates(config, both) == pytest.approx((0.3, 0.7))
    assert compute_gates(config, TaskSignals(5, 0, 1.0, math.nan, 1.0, 0.0)) == (1.0, 0.0)
    assert compute_gates(config, TaskSignals(0, 5, math.nan, 1.0, 0.0, 1.0)) == (0.0, 1.0)
    with pytest.raises(ValueError, match="n_rec=0, n_search=0"):
        compute_gates(config, TaskSignals(0, 0, 1.0, 1.0, 1.0, 1.0))


def test_learnable_and_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="'learnable' is not offered"):
        GateConfig(mode="learnable")
    with pytest.raises(ValueError, match="'soft' is unknown"):
        GateConfig(mode="soft")
    with pytest.raises(ValueError, match="rec_weight=1.5"):
        GateConfig(mode="fixed", rec_weight=1.5)
    with pytest.raises(ValueError, match="mix="):
        GateConfig(mix=(0.5, -0.1, 0.6))
