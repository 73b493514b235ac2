"""MSD's two time-scale update rule (DMD2 Sec. 4.2, the default 5 fake updates) and the runner's
data need of MSD's adversarial stage."""

from onestep.core.distill.msd import MSDConfig
from onestep.core.runner import needs_data


def test_msd_defaults_to_dmd2_two_time_scale_rule():
    assert MSDConfig().fake_updates == 5
    assert MSDConfig.toy_defaults().fake_updates == 5


def test_msd_adversarial_stage_needs_real_data():
    assert not needs_data("msd", MSDConfig())
    assert needs_data("msd", MSDConfig(adv_start=0))
    assert needs_data("msd", MSDConfig(tsm_steps=1))
    assert not needs_data("msd", MSDConfig(adv_start=0, gan_weight=0.0, disc_weight=0.0))

