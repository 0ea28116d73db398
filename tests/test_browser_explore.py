"""`cryoscape explore` in a real browser (Debian's chromium driven by Playwright) on a tiny trained run.

The page loads with no console error; the view and colour switches show the analysis's UMAP and a STAR column;
hovering a point names its particle; a box drag on the plot selects exactly the particles inside the box; the
export writes those indices and the matching STAR rows into RUN/explore_selections/NAME/ and nothing else; a click
on a point loads the map thumbnail generated at its latent. The static page (--write-html) works offline too.
"""

import threading

import numpy as np
import pytest
import starfile

from _browser import ConsoleErrors, launched_browser, png_size, require_chromium
from _explore_run import snapshot
from cryoscape.cli.main import main
from cryoscape.explore import load_explorer_data, make_server

READY = "body[data-explorer-ready='1']"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    require_chromium()
    root = tmp_path_factory.mktemp("browser_explore")
    sim = root / "sim"
    assert main(["simulate", "--preset", "discrete3", "-N", "48", "-D", "16", "--apix", "6", "--snr", "5",
                 "-o", str(sim)]) == 0
    run = root / "run"
    assert main(["train", str(sim / "particles.star"), "-o", str(run), "-n", "1", "--zdim", "3", "--enc-dim", "16",
                 "--enc-layers", "1", "--dec-dim", "16", "--dec-layers", "1", "-b", "8", "--no-progress",
                 "--device", "cpu"]) == 0
    # an analysis as `cryoscape analyze` leaves it: k-means labels and a UMAP (here: known stand-ins)
    z = np.load(run / "latents" / "epoch_001.npy")
    indices = np.load(run / "indices.npy")
    base = run / "analysis" / "epoch_001"
    (base / "kmeans3").mkdir(parents=True)
    np.save(base / "kmeans3" / "labels.npy", np.load(sim / "labels.npz")["state"][indices])
    np.save(base / "umap.npy", np.column_stack([z[:, 2], -z[:, 1]]).astype(np.float32))
    return sim, run


@pytest.fixture(scope="module")
def server(trained):
    _, run = trained
    srv = make_server(load_explorer_data(run, umap=False), port=0, device="cpu")
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    with launched_browser() as b:
        yield b


def _plot_box(page) -> dict:
    """Screen box of the plot area and the axis ranges."""
    return page.evaluate("""() => {
        const gd = document.getElementById('cryoscape-plot');
        const r = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height,
                x: gd.layout.xaxis.range, y: gd.layout.yaxis.range};
    }""")


def _to_screen(box, x, y):
    px = box["left"] + (x - box["x"][0]) / (box["x"][1] - box["x"][0]) * box["width"]
    py = box["top"] + (box["y"][1] - y) / (box["y"][1] - box["y"][0]) * box["height"]
    return float(px), float(py)


def _trace(page, attr):
    return np.array(page.evaluate(f"() => Array.from(document.getElementById('cryoscape-plot').data[0].{attr})"))


def test_explore_in_the_browser(trained, server, browser):
    sim, run = trained
    z = np.load(run / "latents" / "epoch_001.npy").astype(np.float64)
    indices = np.load(run / "indices.npy")
    star = starfile.read(sim / "particles.star")["particles"]
    before = snapshot(run)

    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors = ConsoleErrors(page)
    page.goto(server.url)
    page.wait_for_selector(READY, state="attached", timeout=20000)

    # the UMAP of the analysis, and a STAR column as colour
    page.select_option("#view-select", "UMAP")
    page.wait_for_function("() => document.getElementById('cryoscape-plot').layout.xaxis.title.text === 'UMAP1'")
    np.testing.assert_allclose(_trace(page, "x"), z[:, 2], atol=1e-5)
    page.select_option("#color-select", "rlnDefocusU")
    page.wait_for_function("() => document.getElementById('cryoscape-plot').data[0].marker.colorbar.title.text"
                           " === 'rlnDefocusU'")
    np.testing.assert_allclose(_trace(page, "marker.color"), star["rlnDefocusU"].to_numpy()[indices], rtol=1e-5)

    # PCA view: the page's coordinates are the principal components (SVD by hand, up to sign)
    page.select_option("#view-select", "PCA")
    page.wait_for_function("() => document.getElementById('cryoscape-plot').layout.xaxis.title.text"
                           ".startsWith('PC1')")
    zc = z - z.mean(axis=0)
    pcs = zc @ np.linalg.svd(zc, full_matrices=False)[2][:2].T
    x, y = _trace(page, "x"), _trace(page, "y")
    pcs *= np.sign(np.sum(pcs * np.column_stack([x, y]), axis=0))
    np.testing.assert_allclose(np.column_stack([x, y]), pcs, atol=1e-4)

    # hover the most isolated point: the label names its particle and cluster
    box = _plot_box(page)
    screen = np.array([_to_screen(box, a, b) for a, b in pcs])
    dist = np.linalg.norm(screen[:, None] - screen[None], axis=-1) + np.eye(len(screen)) * 1e9
    target = int(np.argmax(dist.min(axis=1)))
    labels = np.load(run / "analysis" / "epoch_001" / "kmeans3" / "labels.npy")
    page.mouse.move(*screen[target])
    hover = page.wait_for_selector(".hoverlayer .hovertext", timeout=5000).text_content()
    assert f"particle {indices[target]}" in hover and f"cluster {labels[target]}" in hover

    # click it: the server generates the map at its latent and the thumbnail loads
    page.mouse.click(*screen[target])
    page.wait_for_function(
        f"() => {{ const i = document.getElementById('volume-img'); return i.complete && i.naturalWidth > 0 && "
        f"i.dataset.particle === '{indices[target]}'; }}", timeout=30000)

    # box-select by dragging over the left part of the plot, split in the widest gap near the middle of PC1
    order = np.sort(pcs[:, 0])
    mid = slice(len(order) // 4, 3 * len(order) // 4)
    gaps = np.diff(order)[mid]
    split = order[mid][np.argmax(gaps)] + gaps.max() / 2
    expected = np.sort(indices[pcs[:, 0] < split])
    assert 0 < len(expected) < len(indices)
    page.click(".modebar-btn[data-title='Box Select']")
    split_px = _to_screen(box, split, 0)[0]
    page.mouse.move(box["left"] + 2, box["top"] + 2)
    page.mouse.down()
    page.mouse.move(split_px, box["top"] + box["height"] - 2, steps=12)
    page.mouse.up()
    page.wait_for_function(f"() => document.getElementById('selection-count').textContent === "
                           f"'{len(expected)} selected'", timeout=5000)

    page.fill("#selection-name", "left_part")
    page.click("#export-button")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('exported')",
                           timeout=15000)
    out = run / "explore_selections" / "left_part"
    np.testing.assert_array_equal(np.load(out / "indices.npy"), expected)
    np.testing.assert_array_equal(np.loadtxt(out / "indices.txt", dtype=np.int64), expected)
    subset = starfile.read(out / "particles.star")["particles"]
    assert list(subset["rlnImageName"]) == list(star["rlnImageName"].iloc[expected])
    np.testing.assert_allclose(subset["rlnDefocusU"], star["rlnDefocusU"].iloc[expected])
    assert set(snapshot(run)) - set(before) == {f"explore_selections/left_part/{f}" for f in
                                                ("indices.npy", "indices.txt", "particles.star")}

    resp = page.request.get(server.url + f"api/volume.png?i={target}")
    assert resp.headers["content-type"] == "image/png" and png_size(resp.body())[0] > 100
    assert errors == []
    page.close()


def test_static_page_offline(trained, browser, tmp_path):
    _, run = trained
    html = tmp_path / "explore.html"
    assert main(["explore", str(run), "--write-html", str(html), "--skip-umap"]) == 0
    context = browser.new_context(offline=True)
    page = context.new_page()
    errors = ConsoleErrors(page)
    page.goto(html.as_uri())
    page.wait_for_selector(READY, state="attached", timeout=20000)
    assert page.evaluate("() => document.querySelectorAll('.scatterlayer .point').length") == len(
        np.load(run / "indices.npy"))
    page.select_option("#color-select", "rlnDefocusV")  # embedded column, no server needed
    page.wait_for_function("() => document.getElementById('cryoscape-plot').data[0].marker.colorbar.title.text"
                           " === 'rlnDefocusV'")
    assert errors == []
    context.close()
