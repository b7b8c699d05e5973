"""The online path of scoregate: ``/score``, features, model calls, decisions, health."""
