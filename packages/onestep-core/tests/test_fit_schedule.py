"""--steps fits a scheduled method's schedule (rounds, curriculum, phases) to the run, unless
the user sets the schedule's own length."""

import pytest

from onestep.core.distill import toy_config, toy_steps
from onestep.core.runner import SCHEDULE_FIELDS, SCHEDULED, fit_schedule, resolve_method


@pytest.mark.parametrize("method", SCHEDULED)
@pytest.mark.parametrize("steps", [300, 5000])
def test_fit_schedule_spends_the_run(method, steps):
    c = toy_config(method)
    fitted = fit_schedule(method, c, steps)
    # within one step per round or phase of the run (integer division)
    assert steps - 4 <= toy_steps(method, fitted) <= steps
    if method in ("reflow", "instaflow", "slimflow") and getattr(c, "distill_steps", 0):
        share = c.reflow_steps / toy_steps(method, c)
        assert abs(fitted.reflow_steps / toy_steps(method, fitted) - share) < 0.01


def test_resolve_fits_unless_the_schedule_is_set(flow_teacher, capsys):
    config, steps = resolve_method("ict", flow_teacher, steps=500)
    assert steps == 500 and config.total_steps == 500
    assert "fitted to --steps 500" in capsys.readouterr().err
    config, _ = resolve_method("ict", flow_teacher, steps=500, overrides="total_steps=2000")
    assert config.total_steps == 2000 and "stops inside" in capsys.readouterr().err
    config, _ = resolve_method("dmd", flow_teacher, steps=500)
    assert capsys.readouterr().err == ""
    assert set(SCHEDULE_FIELDS) == set(SCHEDULED)
