"""Application tools built on the model: the ``radio`` command line and its helpers.

* :mod:`radio.tools.cli`: the ``radio`` command (``extract``, ``visualize``, ``verify``, ``export``,
  ``versions``; ``export`` runs the exporters of :mod:`radio.export`);
* :mod:`radio.tools.extraction`: the dataset-scale extraction loop behind ``radio extract``;
* :mod:`radio.tools.stores`: the on-disk feature records, the stores that write them and the readers;
* :mod:`radio.tools.images`: image discovery, decoding, the resize policy and size buckets;
* :mod:`radio.tools.visualization`: PCA pictures of dense features;
* :mod:`radio.tools.distributed`: the one ``torchrun`` set-up shared by the command and the examples.

Nothing here is imported by ``import radio``; the model code never depends on these modules.
"""
