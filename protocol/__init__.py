"""fedloom's wire format: every record name, config/metric key and record encoder/decoder.

Below both ``client/`` and ``server/`` (and ``strategies/``), so the two sides of a
message are written against one definition. The names follow Flower's conventions
(:mod:`.keys`: ``arrays``, ``metrics``, ``config``, ``num-examples``, ``server-round``,
``lr``, ``local-epochs``, ``batch-size``), so a fedloom server talks to any ClientApp
written against Flower's Message API and a fedloom client to any Flower strategy.

* :mod:`.keys` -- the names (one constant each).
* :mod:`.records` -- encoders/decoders of fedloom's own array records (compressed
  payloads, ciphertexts) and of the evaluation statistics.
* :mod:`.training` -- the training settings of a train message's ``config``.
* :mod:`.requests` -- what the fedloom server asks for beyond Flower's scalars.

The README's "Wire protocol" table lists every key, who sends it and when.
"""
