"""Fixtures for tests that need a Debian package. Where it is missing they skip, naming the
package, so `uv run pytest` passes on a machine with only Python and uv; under .ci/run, which
installs every one of them and sets ONESTEP_REQUIRE_DEBIAN=1, they fail instead."""

import os
import shutil
from pathlib import Path

import pytest

from onestep.audio.data import ASTERISK_SOUNDS, ASTERISK_TRANSCRIPTS, read_asterisk


def _need_debian(package: str, what: str):
    msg = f"{what} is missing: install the Debian package {package} (apt-get install {package})"
    if os.environ.get("ONESTEP_REQUIRE_DEBIAN") == "1":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


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
