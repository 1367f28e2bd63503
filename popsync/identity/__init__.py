"""Identity resolution without a PIN: matching sector records to citizens (pure domain).

``match(record, index, thresholds)`` -> ``MatchDecision`` (LINKED / REVIEW / UNMATCHED); see
``popsync.identity.matching`` for the passes, scores and blocking, and
``popsync.identity.folding`` for name folding and token weights, and
``popsync.identity.decisions`` for the decisions kept per record and the store protocol the
validator's matching step (``popsync.identity.sector_matching``) uses.
"""

from popsync.identity.folding import (
    TokenWeights,
    default_token_weights,
    fold_for_matching,
    name_tokens,
)
from popsync.identity.matching import (
    DEFAULT_FIELD_WEIGHTS,
    REASONS,
    CandidateCitizen,
    CitizenIndex,
    Evaluation,
    FieldScore,
    FieldWeights,
    MatchDecision,
    MatchMethod,
    MatchOutcome,
    MatchThresholds,
    ScoredCandidate,
    SectorRecord,
    SectorSource,
    decide,
    evaluate,
    match,
    score_pair,
)

__all__ = [
    "DEFAULT_FIELD_WEIGHTS",
    "REASONS",
    "CandidateCitizen",
    "CitizenIndex",
    "Evaluation",
    "FieldScore",
    "FieldWeights",
    "MatchDecision",
    "MatchMethod",
    "MatchOutcome",
    "MatchThresholds",
    "ScoredCandidate",
    "SectorRecord",
    "SectorSource",
    "TokenWeights",
    "decide",
    "default_token_weights",
    "evaluate",
    "fold_for_matching",
    "match",
    "name_tokens",
    "score_pair",
]
