"""Reading a weights file of this port (``.pth`` or ``.safetensors``) into plain containers, with
one clear line for each way a file can be wrong. Ground layer: it knows the formats, not the
network; ``model.read_weights`` and ``model.load_pretrained`` build on it.
"""
import json
import os
from typing import Dict, Optional

import torch


class CheckpointError(RuntimeError):
    """A weights file that cannot be loaded; the message names the file and what to do."""


def load_error_summary(e: Exception) -> str:
    """One line for why ``torch.load(weights_only=True)`` failed, without PyTorch's advice to
    retry with ``weights_only=False``: a convert.py output never needs it."""
    text = str(e).strip()
    marker = 'WeightsUnpickler error:'
    if marker in text:
        detail = text.split(marker, 1)[1].strip().splitlines()
        detail = detail[0].strip() if detail else ''
        return ('damaged, or pickles objects other than tensors and plain containers'
                + (f': {detail}' if detail else ''))
    if not text:
        return 'empty or cut short' if isinstance(e, EOFError) else type(e).__name__
    return text.splitlines()[0].split('. ')[0].rstrip('.')


def read_safetensors(path: str, map_location) -> dict:
    """A convert.py ``.safetensors`` output as ``{'config', 'state_dict'}``: the tensors, and the
    config from the file's metadata. Reading one runs no code, whatever the file holds."""
    try:
        from safetensors import safe_open
        device = str(map_location) if isinstance(map_location, (str, torch.device)) else 'cpu'
        with safe_open(path, framework='pt', device=device) as f:
            metadata = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(metadata['config'])
    except ImportError:
        raise CheckpointError(f'{path}: reading .safetensors needs the safetensors package '
                              f'(pip install -r requirements.txt)') from None
    except KeyError:
        raise CheckpointError(f'{path}: a safetensors file without this port\'s config in its '
                              f'metadata; write it with convert.py --output FILE.safetensors') from None
    except Exception as e:  # safetensors raises its own error types for damaged files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f'{path}: not a safetensors file this port can read ({first}); '
                              f'convert the TF checkpoint again with convert.py') from None
    return {'config': config, 'state_dict': state_dict}


def read_weights_file(path: str, map_location='cpu') -> dict:
    """``{'config': dict or None, 'state_dict', 'class_names', 'source'}`` of a ``convert.py`` or
    ``train.py`` output; ``config`` is None for a bare state dict. A ``.pth`` is read with
    ``torch.load(weights_only=True)``, a ``.safetensors`` with the config in its metadata."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: no such weights file; run `python convert.py` first '
                              f'(see README.md)')
    if path.endswith('.safetensors'):
        obj = read_safetensors(path, map_location)
    else:
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # pickle, zip and torch errors all mean "not a weights file of ours"
            raise CheckpointError(f'{path}: not a PyTorch weights file this port can read '
                                  f'({load_error_summary(e)}); convert the TF checkpoint again '
                                  f'with convert.py') from None
    if isinstance(obj, dict) and 'state_dict' in obj and 'config' in obj:
        config, state_dict = obj['config'], obj['state_dict']
        if not isinstance(config, dict):
            raise CheckpointError(f'{path}: its config is not this port\'s (not a dict)')
    elif isinstance(obj, dict) and 'model' in obj and 'optimizer' in obj:
        raise CheckpointError(f'{path}: a train.py state (last.pth), not weights; pass it to '
                              f'train.py --resume, or use the best.pth beside it')
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        config, state_dict = None, obj
    else:
        raise CheckpointError(f'{path}: expected a convert.py output or a state dict of this model')
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor)
                                                   for v in state_dict.values()):
        raise CheckpointError(f'{path}: its state_dict is not a dict of tensors')
    return {'config': config, 'state_dict': state_dict,
            'class_names': obj.get('class_names') if config is not None else None,
            'source': obj.get('source') if config is not None else None}


def load_state(net: torch.nn.Module, state_dict: dict, path: str) -> None:
    """Loads ``state_dict`` into ``net``, every tensor present and of its shape, or raises a
    CheckpointError that names the first misfits."""
    try:
        missing, unexpected = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches
        missing, unexpected = [str(e).strip().splitlines()[-1].strip()], []
    if missing or unexpected:
        what = (f'missing {missing[:3]}' if missing else '') + (
            f' unexpected {unexpected[:3]}' if unexpected else '')
        raise CheckpointError(f'{path}: weights do not fit the network of its config ({what.strip()}); '
                              f'convert the TF checkpoint again with convert.py')


def write_weights(payload: dict, output: str, f) -> None:
    """``payload`` as ``torch.save`` writes it, or for a ``.safetensors`` output the tensors with
    the config and source as JSON in the file's metadata (a format that cannot carry code)."""
    if not output.endswith('.safetensors'):
        torch.save(payload, f)
        return
    metadata = {'config': json.dumps(payload['config']), 'source': json.dumps(payload['source'])}
    write_safetensors(payload['state_dict'], f, metadata)


def write_safetensors(state: Dict[str, torch.Tensor], f, metadata: Optional[dict] = None) -> None:
    from safetensors.torch import save
    f.write(save({k: v.contiguous() for k, v in state.items()}, metadata=metadata))
