"""Fixtures for tests that need a Debian package: they fail (not skip) with the package to
install where it is missing, since .ci/run installs every one of them."""

import shutil
from pathlib import Path

import pytest

from onestep.audio.data import ASTERISK_SOUNDS, ASTERISK_TRANSCRIPTS, read_asterisk


def _need_debian(package: str, what: str):
    pytest.fail(f"{what} is missing: install the Debian package {package} "
                f"(apt-get install {package}; .ci/run does)", pytrace=False)


@pytest.fixture(scope="session")
def asterisk():
    """The spoken asterisk prompts (Debian's asterisk-core-sounds-en-wav + -en)."""
    if not Path(ASTERISK_SOUNDS).is_dir():
        _need_debian("asterisk-core-sounds-en-wav", f"the asterisk recordings ({ASTERISK_SOUNDS})")
    if not Path(ASTERISK_TRANSCRIPTS).is_file():
        _need_debian("asterisk-core-sounds-en", f"the asterisk transcripts "
                     f"({ASTERISK_TRANSCRIPTS})")
    return read_asterisk()


@pytest.fixture(scope="session")
def espeak_program():
    """The path of Debian's espeak-ng program."""
    path = shutil.which("espeak-ng")
    if path is None:
        _need_debian("espeak-ng", "the espeak-ng program")
    return path
