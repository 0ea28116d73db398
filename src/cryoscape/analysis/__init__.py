"""Analysis of trained models and reconstructions.

Model-independent modules (a trained model enters only as an object with ``generate_volumes(z, batch_size)``,
``pixel_size_angstrom`` and ``zdim``, as returned by :func:`cryoscape.models.load_run`):

* :mod:`~cryoscape.analysis.latent`: loading run latents, PCA, UMAP, k-means with on-data centres, PC traversals.
* :mod:`~cryoscape.analysis.traversal`: nearest-neighbour graph paths (Dijkstra) and straight-line trajectories.
* :mod:`~cryoscape.analysis.evaluate`: scores against simulation ground truth (ARI, matched accuracy, cluster
  entropy, Spearman, map FSC/correlation).
* :mod:`~cryoscape.analysis.maps`: automatic soft masks, phase randomisation, corrected masked FSC, map correlation.
* :mod:`~cryoscape.analysis.volume_space`: volumes in batches, correlation to a reference, voxel-space PCA.
* :mod:`~cryoscape.analysis.plots` and :mod:`~cryoscape.analysis.report`: figures and the self-contained HTML report.
* :mod:`~cryoscape.analysis.fsc` and :mod:`~cryoscape.analysis.backprojection`: FSC and reconstruction.
"""
