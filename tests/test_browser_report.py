"""The HTML report of `cryoscape analyze` in a real browser: it opens offline with no console error, every image
decodes (naturalWidth > 0) and a full-page screenshot is a real, non-blank picture."""

import numpy as np
import pytest

from _browser import ConsoleErrors, launched_browser, png_size, require_chromium
from cryoscape.cli.main import main


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    require_chromium()
    root = tmp_path_factory.mktemp("browser_report")
    sim = root / "sim"
    assert main(["simulate", "--preset", "discrete3", "-N", "48", "-D", "16", "--apix", "6", "--snr", "5",
                 "-o", str(sim)]) == 0
    run = root / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", "--zdim", "3", "--enc-dim", "16",
                 "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1", "-b", "8", "--no-progress",
                 "--device", "cpu"]) == 0
    assert main(["analyze", str(run), "--ksample", "3", "--pc", "1", "--skip-umap", "--device", "cpu"]) == 0
    return run / "analysis" / "epoch_001" / "index.html"


def test_report_renders_in_chromium(report, tmp_path):
    from matplotlib.image import imread

    with launched_browser() as browser:
        context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
        page = context.new_page()
        errors = ConsoleErrors(page)
        page.goto(report.as_uri(), wait_until="load")
        widths = page.evaluate("() => Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 5 and min(widths) > 0, widths
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        context.close()
    assert errors == []
    data = shot.read_bytes()
    width, height = png_size(data)
    assert width == 1200 and height >= 900 and len(data) > 20_000
    pixels = imread(shot)[..., :3]
    assert pixels.std() > 0.05  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3)[::97], axis=0)) > 50  # text, plots and maps, not a flat fill


def test_missing_chromium_skips_but_fails_under_ci(monkeypatch):
    import _browser

    monkeypatch.setattr(_browser, "chromium_path", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        _browser.require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required when CI is set"):
        _browser.require_chromium()
