"""The Neural Predictor (Wen et al., ECCV 2020) as its PyTorch reproduction defines it, and the MLP
it is compared with.

A cell is a graph of V nodes (padded to the largest cell of a table): ``ops`` [B, V, F] one-hot
node types (zero rows for padding), ``adjacency`` [B, V, V] with ``adjacency[i, j] = 1`` for an
edge i -> j, and ``num_vertices`` [B], the real nodes.
"""
import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from neural_predictor import dataset


def normalize_rows(adj: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum (rows that sum to 0 stay 0)."""
    total = adj.sum(-1, keepdim=True)
    return adj / total.clamp(min=1e-12)


class DirectedGraphConvolution(nn.Module):
    """One GCN layer: the mean of a pass along the edges and one against them, each
    ``ReLU(norm(M) X W)`` with norm() the row normalisation, M the (already row-normalised)
    A + I and its transpose, then dropout 0.1. No bias, xavier-uniform weights."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.1):
        super().__init__()
        self.weight_fwd = nn.Parameter(torch.empty(in_features, out_features))
        self.weight_bwd = nn.Parameter(torch.empty(in_features, out_features))
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.weight_fwd)
        nn.init.xavier_uniform_(self.weight_bwd)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        fwd = F.relu(normalize_rows(adj) @ (x @ self.weight_fwd))
        bwd = F.relu(normalize_rows(adj.transpose(1, 2)) @ (x @ self.weight_bwd))
        return self.dropout((fwd + bwd) / 2)


class NeuralPredictor(nn.Module):
    """3 GCN layers of 144 units on (A + I) row-normalised, a mean over the real nodes, FC 128,
    dropout 0.1, FC 1. Predicts the normalised accuracy (or, as the two-stage predictor's
    classifier, a logit)."""

    def __init__(self, in_features: int = 5, hidden: int = 144, layers: int = 3, fc_hidden: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.gcn = nn.ModuleList(DirectedGraphConvolution(in_features if i == 0 else hidden, hidden, dropout)
                                 for i in range(layers))
        self.fc1 = nn.Linear(hidden, fc_hidden, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(fc_hidden, 1, bias=False)

    def forward(self, ops: torch.Tensor, adjacency: torch.Tensor, num_vertices: torch.Tensor) -> torch.Tensor:
        v = adjacency.shape[-1]
        real = (torch.arange(v, device=ops.device) < num_vertices[:, None]).to(ops.dtype)  # [B, V]
        eye = torch.diag_embed(real)  # self-loops on the real nodes only: padding stays zero
        adj = normalize_rows(adjacency.to(ops.dtype) + eye)
        x = ops
        for layer in self.gcn:
            x = layer(x, adj)
        pooled = (x * real[..., None]).sum(1) / num_vertices[:, None].to(ops.dtype)
        return self.fc2(self.dropout(self.fc1(pooled))).view(-1)


class MLPPredictor(nn.Module):
    """The baseline on the same encoding: the flattened one-hot ops and upper-triangular
    adjacency into an MLP (the paper's supplement compares the two)."""

    def __init__(self, num_nodes: int, in_features: int, hidden: int = 144, layers: int = 3,
                 dropout: float = 0.1):
        super().__init__()
        width = num_nodes * in_features + num_nodes * (num_nodes - 1) // 2
        blocks, d = [], width
        for _ in range(layers):
            blocks += [nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout)]
            d = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(d, 1)
        self.num_nodes = num_nodes

    def forward(self, ops: torch.Tensor, adjacency: torch.Tensor, num_vertices: torch.Tensor) -> torch.Tensor:
        i, j = torch.triu_indices(self.num_nodes, self.num_nodes, 1, device=ops.device)
        x = torch.cat([ops.flatten(1), adjacency.to(ops.dtype)[:, i, j]], dim=1)
        return self.head(self.body(x)).view(-1)


# --- training and prediction ----------------------------------------------------------------------

@dataclasses.dataclass
class Settings:
    epochs: int = 300
    lr: float = 1e-4
    weight_decay: float = 1e-3
    batch_size: int = 10
    seed: int = 0
    model: str = 'gcn'  # or 'mlp'


def build(settings: Settings, graphs: dataset.Graphs) -> torch.nn.Module:
    if settings.model == 'mlp':
        return MLPPredictor(graphs.ops.shape[1], graphs.ops.shape[2])
    return NeuralPredictor(in_features=graphs.ops.shape[2])


def fit(graphs: dataset.Graphs, targets: np.ndarray, settings: Settings, loss: str = 'mse') -> torch.nn.Module:
    """A predictor trained on ``graphs`` towards ``targets`` (normalised accuracies, or 0/1 with
    ``loss='bce'``), seeded: the same settings give the same weights."""
    torch.manual_seed(settings.seed)
    net = build(settings, graphs)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.epochs)
    ops, adj, nv = graphs.tensors()
    y = torch.as_tensor(np.asarray(targets, np.float32))
    generator = torch.Generator().manual_seed(settings.seed)
    batch = min(settings.batch_size, len(graphs))
    net.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(graphs), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):  # drop_last
            idx = order[start:start + batch]
            out = net(ops[idx], adj[idx], nv[idx])
            if loss == 'bce':
                value = F.binary_cross_entropy_with_logits(out, y[idx])
            else:
                value = F.mse_loss(out, y[idx])
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def predict(net: torch.nn.Module, graphs: dataset.Graphs, batch: int = 4096) -> np.ndarray:
    net.eval()
    ops, adj, nv = graphs.tensors()
    return torch.cat([net(ops[i:i + batch], adj[i:i + batch], nv[i:i + batch])
                      for i in range(0, len(graphs), batch)]).numpy()


def regress(train: dataset.Graphs, evaluate: dataset.Graphs, settings: Settings,
            norm=(dataset.MEAN, dataset.STD)) -> np.ndarray:
    """Predicted accuracies (fractions) of ``evaluate`` by a regressor trained on ``train``
    towards labels normalised by ``norm`` (mean, std): NAS-Bench-101's by default."""
    mean, std = norm
    net = fit(train, (train.labels - mean) / std, settings)
    return predict(net, evaluate) * std + mean
