"""Pretrained word vectors: load (GloVe, word2vec text/binary, fastText ``.vec``, gzip),
cache, evaluate, and align to a :class:`embtab.Vocab`.

Examples:
    >>> import embtab
    >>> v = embtab.vectors.load("glove.6B.100d.txt")        # doctest: +SKIP
    >>> v.most_similar("frog", k=3)                          # doctest: +SKIP
    >>> emb, report = embtab.Embedding.from_vectors(v, vocab)  # doctest: +SKIP
    >>> print(report)                                        # doctest: +SKIP
"""

from ._errors import VectorsFormatError as VectorsFormatError
from ._load import FORMATS as FORMATS, file_sha256 as file_sha256
from .align import CoverageReport as CoverageReport, embedding_from_vectors as embedding_from_vectors
from .core import Vectors as Vectors, load as load
from .evaluate import AnalogyResult as AnalogyResult, WordPairsResult as WordPairsResult

__all__ = [
    "load",
    "Vectors",
    "VectorsFormatError",
    "CoverageReport",
    "embedding_from_vectors",
    "WordPairsResult",
    "AnalogyResult",
    "FORMATS",
    "file_sha256",
]
