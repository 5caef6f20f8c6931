"""End to end in a real browser: headless Chromium submits the example site's forms to cgiserve."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from cgiserve import status
from tests.conftest import write_script
from tests.http import Connection, wait_for
from tests.server import CHECKOUT
from tests.test_e2e_metrics import METRICS_LISTEN, hold, metrics_port, running
from tests.webdriver import ChromeDriver

EXAMPLES = CHECKOUT / "examples"

# CI installs the browser and sets this, so that a broken install fails
# the run instead of silently skipping the only test that uses a browser.
REQUIRE_BROWSER_VARIABLE = "CGISERVE_REQUIRE_BROWSER"

# Needs HTML escaping (<, &) and form encoding (<, &, space, +, %, =, non-ASCII).
NAME = "Paul <b>& Zoë 1+1=2%"

# A twistd log line at level error or critical, or a traceback.
LOGGED_ERROR = re.compile(r"#(?:error|critical)\]|^Traceback|\tTraceback", re.MULTILINE)


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None if it can."""
    missing = [program for program in ("chromium", "chromedriver") if shutil.which(program) is None]
    if not missing:
        return None
    return f"{' and '.join(missing)} not on PATH (Debian packages: chromium, chromium-driver)"


def require_browser() -> None:
    """Skip the calling test without a browser; fail it instead if CGISERVE_REQUIRE_BROWSER=1."""
    reason = missing_browser()
    if reason is None:
        return
    if os.environ.get(REQUIRE_BROWSER_VARIABLE) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_BROWSER_VARIABLE}=1 requires the browser test", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser():
    """A WebDriver session of headless Chromium; browser and chromedriver are gone afterwards."""
    require_browser()
    with ChromeDriver(shutil.which("chromedriver"), shutil.which("chromium")) as driver:
        yield driver.new_session()


@pytest.fixture
def example_site(docroot, serve):
    """cgiserve serving a copy of the bundled example site (file modes kept: the scripts stay executable)."""
    shutil.copytree(EXAMPLES, docroot, dirs_exist_ok=True)
    return serve("--access-log", str(docroot.parent / "access.log"))


@pytest.mark.parametrize("action", ["hello.py", "hello-stdin.py"])
def test_form_greets_by_name_escaped(browser, example_site, action):
    """A name typed into an example form comes back in the greeting literally: decoded, then HTML-escaped."""
    browser.navigate(f"{example_site.url}/index.html")
    form = f'form[action="{action}"]'
    browser.find(f'{form} input[name="first_name"]').send_keys(NAME)
    browser.find(f'{form} input[type="submit"]').click()

    # A click does not always wait for the navigation it starts: wait for
    # the new page, whose <h1> always has some text.
    result_url = f"{example_site.url}/{action}"
    heading = browser.wait_until(
        lambda: browser.current_url == result_url and browser.find("h1").text,
        what=f"an <h1> on {result_url}",
    )
    page = browser.page_source
    assert heading == f"Hello, {NAME}!", page
    assert browser.find_all("b") == [], page

    # Stopped first, so that errors logged late (an unhandled Deferred
    # failure is logged when it is collected) are in the log too.
    example_site.stop()
    log = example_site.log()
    access = (example_site.root.parent / "access.log").read_text()
    assert f'"POST /{action} HTTP/1.1" 200' in access, access
    assert not LOGGED_ERROR.search(log), log


def test_status_page_lists_a_running_script(browser, docroot, serve):
    """The --metrics status page renders in Chromium, lists a running script, and refreshes itself once it has ended."""
    flag = docroot.parent / "release"
    write_script(docroot, "hold.cgi", hold(flag))
    server = serve("--metrics", METRICS_LISTEN)
    with Connection(server.port) as client:
        client.send(b"GET /hold.cgi?token=hunter2 HTTP/1.1\r\nHost: x\r\n\r\n")
        port = metrics_port(server)
        assert wait_for(lambda: running(port, "/hold.cgi"))
        browser.navigate(f"http://127.0.0.1:{port}/status")
        assert browser.find("h1").text == "cgiserve status"
        [row] = browser.find_all("#running tbody tr")
        cells = [cell.text for cell in browser.find_all("#running tbody td")]
        assert cells[0] == "/hold.cgi" and cells[3] == "GET /hold.cgi", cells
        assert "hunter2" not in browser.page_source
        flag.touch()
        assert client.read_response().status == 200
    # The page reloads itself every few seconds: the script is gone from it.
    browser.wait_until(
        lambda: browser.find("h2").text == "Scripts running now: 0",
        timeout_seconds=status.REFRESH_SECONDS * 3,
        what="the status page without the script",
    )
    assert browser.find_all("#running tbody tr") == []
    server.stop()
    assert not LOGGED_ERROR.search(server.log()), server.log()


def test_missing_browser_skips(monkeypatch):
    """Without chromium or chromedriver on PATH the browser test is skipped, saying what is missing."""
    monkeypatch.setattr(shutil, "which", lambda program: None if program == "chromedriver" else f"/usr/bin/{program}")
    monkeypatch.delenv(REQUIRE_BROWSER_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromedriver not on PATH"):
        require_browser()


def test_missing_browser_fails_when_required(monkeypatch):
    """With CGISERVE_REQUIRE_BROWSER=1 a missing browser fails the test instead of skipping it."""
    monkeypatch.setattr(shutil, "which", lambda program: None)
    monkeypatch.setenv(REQUIRE_BROWSER_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="chromium and chromedriver not on PATH"):
        require_browser()
