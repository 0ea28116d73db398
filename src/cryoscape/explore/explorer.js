/* cryoscape explore: the glue between the plotly scatter (built in Python) and the page.
 * Switches the view and the colouring, keeps the lasso/box selection, exports it (POST api/export on the
 * server; a download of the index list on a static page) and shows the map at a clicked point (api/volume.png).
 * Point i of the single trace is particle i of the run (RUN/indices.npy order).
 */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("cryoscape-data").textContent);

  function byId(id) { return document.getElementById(id); }

  function say(el, text, isError) {
    el.textContent = text;
    el.className = isError ? "error" : "";
  }

  function jsonOrError(response) {
    return response.json().then(function (body) {
      if (!response.ok) { throw new Error(body.error || response.statusText); }
      return body;
    });
  }

  // Called by the plot's post-script once the figure exists; the rest of the page may still be parsing.
  window.cryoscapeExplorer = function (gd) {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", function () { init(gd); });
    } else {
      init(gd);
    }
  };

  function init(gd) {
    var selected = [];  // run positions of the selected points
    var columns = DATA.columns;
    var status = byId("status");
    var caption = byId("volume-caption");
    var img = byId("volume-img");

    function showCount() {
      byId("selection-count").textContent = selected.length + " selected";
      byId("export-button").disabled = selected.length === 0;
    }

    function getColumn(name) {
      if (columns[name]) { return Promise.resolve(columns[name]); }
      if (!DATA.server) { return Promise.reject(new Error("column " + name + " is not in this page")); }
      return fetch("api/column?name=" + encodeURIComponent(name)).then(jsonOrError).then(function (body) {
        columns[name] = body.values;
        return body.values;
      });
    }

    function colorBy(name) {
      if (name === "cluster") {
        return Plotly.restyle(gd, {
          "marker.color": [DATA.cluster], "marker.colorscale": [DATA.cluster_colorscale], "marker.cauto": false,
          "marker.cmin": -0.5, "marker.cmax": DATA.k - 0.5, "marker.colorbar.title.text": "cluster",
          "marker.colorbar.tickmode": DATA.k <= 40 ? "array" : "auto"
        });
      }
      return getColumn(name).then(function (values) {
        return Plotly.restyle(gd, {
          "marker.color": [values], "marker.colorscale": "Viridis", "marker.cauto": true,
          "marker.colorbar.title.text": name, "marker.colorbar.tickmode": "auto"
        });
      });
    }

    function showView(name) {
      var v = DATA.views[name];
      selected = [];
      showCount();
      return Plotly.update(gd, {x: [v.x], y: [v.y], selectedpoints: [null]}, {
        "xaxis.title.text": v.axes[0], "yaxis.title.text": v.axes[1], "xaxis.autorange": true,
        "yaxis.autorange": true, "uirevision": name, "selections": []
      });
    }

    function exportSelection() {
      var indices = selected.map(function (i) { return DATA.input_index[i]; });
      indices.sort(function (a, b) { return a - b; });
      var name = byId("selection-name").value.trim();
      if (!DATA.server) {
        var a = document.createElement("a");
        a.href = URL.createObjectURL(new Blob([indices.join("\n") + "\n"], {type: "text/plain"}));
        a.download = (name || "selection") + "_indices.txt";
        document.body.appendChild(a);
        a.click();
        a.remove();
        say(status, "downloaded " + indices.length + " particle indices as " + a.download);
        return Promise.resolve();
      }
      say(status, "exporting " + indices.length + " particles ...");
      return fetch("api/export", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({name: name || null, indices: indices})
      }).then(jsonOrError).then(function (body) {
        status.dataset.folder = body.folder;
        say(status, "exported " + body.n_selected + " particles to " + body.folder + " (" + body.files.join(", ") + ")");
      }).catch(function (err) {
        say(status, "export failed: " + err.message, true);
      });
    }

    function showVolume(pos) {
      var label = "particle " + DATA.input_index[pos] + ", cluster " + DATA.cluster[pos];
      if (!DATA.server) {
        say(caption, label + ": maps need the server (cryoscape explore RUN)");
        return;
      }
      say(caption, "generating the map of " + label + " ...");
      img.onload = function () {
        img.style.display = "block";
        img.dataset.particle = String(DATA.input_index[pos]);
        say(caption, label);
      };
      img.onerror = function () { say(caption, "could not generate the map of " + label, true); };
      img.src = "api/volume.png?i=" + pos;
    }

    byId("view-select").value = DATA.default_view;
    byId("view-select").addEventListener("change", function () { showView(this.value); });
    byId("color-select").addEventListener("change", function () {
      colorBy(this.value).catch(function (err) { say(status, "colouring failed: " + err.message, true); });
    });
    byId("export-button").addEventListener("click", exportSelection);
    gd.on("plotly_selected", function (ev) {
      selected = ev && ev.points ? ev.points.map(function (p) { return p.pointIndex; }) : [];
      showCount();
    });
    gd.on("plotly_deselect", function () { selected = []; showCount(); });
    gd.on("plotly_click", function (ev) {
      if (ev && ev.points && ev.points.length) { showVolume(ev.points[0].pointIndex); }
    });
    Plotly.Plots.resize(gd);  // the figure was drawn before the side panel existed
    if (DATA.particles_problem) { say(status, "no particle metadata: " + DATA.particles_problem, true); }
    showCount();
    document.body.setAttribute("data-explorer-ready", "1");
  }
}());
