"""Every record name and config/metric key of fedloom's messages, one constant each.

Flower's conventions come first: a message's content is a ``RecordDict`` with an
``ArrayRecord`` under ``arrays``, a ``ConfigRecord`` under ``config`` (server to
client) and a ``MetricRecord`` under ``metrics`` (client to server); replies are
weighted by ``num-examples`` (the defaults of ``flwr.serverapp.strategy.FedAvg``).
The rest are fedloom's own, sent only by a fedloom server or only when it asks
(:mod:`.requests`).
"""

from __future__ import annotations

# --- Flower's conventions (record names and keys of flwr.serverapp.strategy.FedAvg) ---
#: ArrayRecord: the model down, the weights (or an encoded update) up.
ARRAYS = "arrays"
#: ConfigRecord of an instruction (train, evaluate, query).
CONFIG = "config"
#: MetricRecord of a reply.
METRICS = "metrics"
#: Reply metric: examples behind the reply; strategies weight replies by it.
NUM_EXAMPLES = "num-examples"
#: Instruction config: the round (Flower's strategies set it).
SERVER_ROUND = "server-round"
#: Train config: the round's learning rate (after the lr schedule), as Flower's examples read it.
LR = "lr"
#: Train config: local epochs (fractions: that share of the client's data, freshly drawn).
LOCAL_EPOCHS = "local-epochs"
#: Train config: the local batch size.
BATCH_SIZE = "batch-size"
#: Train config: FedProx's proximal term (Flower's FedProx sets it).
PROXIMAL_MU = "proximal-mu"

# --- reply metrics fedloom's clients send ---
#: Train reply: mean local training loss.
TRAIN_LOSS = "train_loss"
#: Train reply, when the train config sets :data:`INITIAL_LOSS` (q-FFL): the received model's loss.
TRAIN_LOSS_INITIAL = "train_loss_initial"
#: Evaluate reply: loss on the client's test share (beside the task's metrics).
LOSS = "loss"
#: Train reply, when asked (:data:`.requests.PARTITION`): the partition trained on, of how many.
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
#: Node config, not metrics: the server leaves them out of the aggregated train metrics
#: (wrappers such as SampleDPStrategy read them from each reply, so the replies keep them).
NODE_CONFIG_KEYS = (PARTITION_ID, NUM_PARTITIONS)
#: Train reply, when asked (:data:`.requests.PRIVACY`, ``dp=sample``): cumulative epsilon
#: and whether the client's budget is spent (then the reply has no arrays).
DP_EPSILON = "dp-epsilon"
DP_EXHAUSTED = "dp-exhausted"
#: Evaluate reply, when asked (:data:`.requests.STATISTICS`): prefix of the per-client
#: statistics of the metrics that do not average (class counts, AUC scores).
STATISTIC_PREFIX = "stat."

# --- instruction config fedloom's server sends ---
#: Train config: the run's ID (kept on resume); clients key their persistent state by it.
RUN_ID = "fedloom-run-id"
#: Train config: true when the strategy wants the received model's loss on the client's
#: data before training (``train_loss_initial``, q-FFL).
INITIAL_LOSS = "fedloom-initial-loss"
#: Instruction config: what the server asks the clients to report (:mod:`.requests`).
REPORT = "fedloom-report"
#: Train config: the round's shared seed (randk's mask, partial HE uploads).
COMPRESSION_SEED = "compression-seed"
#: Instruction config under HE: total weight of the encrypted global model (0: plain).
HE_TOTAL_WEIGHT = "he-total-weight"
#: Instruction config under HE with partial uploads: the total weight behind each ciphertext.
HE_BLOCK_WEIGHTS = "he-block-weights"
#: Instruction config under HE: the run's key id (``params.json``), checked by each client.
HE_KEY_ID = "he-key-id"

# --- fedloom's own records ---
#: Array in :data:`ARRAYS` holding an encoded (compressed) model or update.
PAYLOAD = "payload"
#: Arrays in :data:`ARRAYS` holding ciphertexts: ``ct000000``, ``ct000001``, ...
CIPHERTEXT_PREFIX = "ct"
#: Query config key and value: BatchNorm sums of the sent model over the client's data.
QUERY = "query"
QUERY_BATCHNORM = "batchnorm-sums"
#: Query reply record (ArrayRecord) holding the sums.
BATCHNORM_SUMS = "batchnorm-sums"

#: Train config, on a Ray cluster (``ray-address``): the server asks each client where it ran.
REPORT_NODE_KEY = "report-node"
#: Train reply record holding the answer (a config record, never averaged as a metric).
NODE_RECORD = "node"
RAY_NODE_KEY = "ray-node-id"
HOSTNAME_KEY = "hostname"
