"""The dict-aware DataParallel: per-device entries, CPU keywords, gathering (losses averaged),
the CPU fallback, threads and autocast; the CUDA paths are marked."""
import threading

import pytest
import torch
from torch import nn

from pydetectron.nn.data_parallel import DataParallel, gather_outputs, scatter_minibatches


class Probe(nn.Module):
    """Training-contract-like module recording what each call received."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([2.0]))
        self.calls = []
        self.lock = threading.Lock()

    def forward(self, data, im_info, roidb=None):
        with self.lock:
            self.calls.append({'data': data, 'im_info': im_info, 'roidb': roidb,
                               'thread': threading.current_thread().name,  # idents are reused, names are not
                               'autocast': torch.is_autocast_enabled('cpu') and
                               torch.get_autocast_dtype('cpu')})
        loss = (self.w * data.sum()).reshape(())
        return {'losses': {'loss_cls': loss}, 'metrics': {'accuracy_cls': data.new_tensor(
            float(data.shape[0]))}, 'rois': data.new_full((data.shape[0], 5), data.shape[-1])}


def batch(n_dev):
    """Per-device lists; device i's blob is (i+1, 3, 4+i, 5+i): a different size per device."""
    data = [torch.full((i + 1, 3, 4 + i, 5 + i), float(i + 1)) for i in range(n_dev)]
    im_info = [torch.tensor([[4. + i, 5. + i, 1.]] * (i + 1)) for i in range(n_dev)]
    roidb = [[{'boxes': torch.zeros(1, 4), 'dev': i}] * (i + 1) for i in range(n_dev)]
    return {'data': data, 'im_info': im_info, 'roidb': roidb}


def test_no_device_is_a_plain_call_on_the_single_entry():
    probe = Probe()
    dp = DataParallel(probe, device_ids=[])
    b = batch(1)
    out = dp(**b)
    assert len(probe.calls) == 1
    assert probe.calls[0]['data'] is b['data'][0] and probe.calls[0]['roidb'] is b['roidb'][0]
    assert out['losses']['loss_cls'].item() == 2.0 * b['data'][0].sum().item()
    with pytest.raises(ValueError, match='2 per-device entries for 1 device'):
        dp(**batch(2))
    with pytest.raises(TypeError, match="'data' is a Tensor"):
        dp(data=torch.zeros(1), im_info=[torch.zeros(1, 3)])


def test_scatter_moves_entries_to_their_device_except_cpu_keywords():
    b = batch(2)
    nested = [{'t': torch.ones(2)}, (torch.zeros(1),)]
    b['extra'] = [nested, nested]
    devices = [torch.device('cpu'), torch.device('meta')]
    per_dev = scatter_minibatches(b, devices, cpu_keywords=('roidb',))
    assert per_dev[0]['data'].device.type == 'cpu' and per_dev[1]['data'].device.type == 'meta'
    assert per_dev[1]['data'].shape == (2, 3, 5, 6)                 # entry 1 as it was
    assert per_dev[1]['extra'][0]['t'].device.type == 'meta'      # nested containers too
    assert isinstance(per_dev[1]['extra'][1], tuple)
    assert per_dev[1]['roidb'] is b['roidb'][1]                     # CPU keyword untouched
    with pytest.raises(ValueError, match='different numbers of per-device entries'):
        scatter_minibatches({'data': [1, 2], 'im_info': [1]}, devices)


def test_gather_averages_scalars_and_concatenates_tensors():
    outs = [{'losses': {'a': torch.tensor(1.0)}, 'rois': torch.zeros(2, 5), 'lvls': [torch.ones(1)],
             'n': 1.0, 'none': None},
            {'losses': {'a': torch.tensor(4.0)}, 'rois': torch.ones(3, 5), 'lvls': [torch.ones(2)],
             'n': 3.0, 'none': None}]
    g = gather_outputs(outs, torch.device('cpu'))
    assert g['losses']['a'].item() == 2.5
    assert g['rois'].shape == (5, 5) and g['lvls'][0].shape == (3,)
    assert g['n'] == 2.0 and g['none'] is None
    with pytest.raises(ValueError, match='different keys'):
        gather_outputs([{'a': torch.ones(())}, {'b': torch.ones(())}], torch.device('cpu'))


class CpuDataParallel(DataParallel):
    """Replicas are the module itself: lets the multi-device path run with CPU 'devices'."""

    def replicate(self, module, devices):
        return [module] * len(devices)


def test_multi_device_path_threads_gather_and_gradients():
    probe = Probe()
    dp = CpuDataParallel(probe, device_ids=[torch.device('cpu')] * 2)
    b = batch(2)
    out = dp(**b)
    assert len(probe.calls) == 2
    by_rows = sorted(probe.calls, key=lambda c: c['data'].shape[0])
    assert [c['data'].shape for c in by_rows] == [(1, 3, 4, 5), (2, 3, 5, 6)]
    assert by_rows[1]['roidb'] is b['roidb'][1]
    assert len({c['thread'] for c in probe.calls}) == 2          # one thread per replica
    s0, s1 = b['data'][0].sum().item(), b['data'][1].sum().item()
    assert out['losses']['loss_cls'].item() == pytest.approx(2.0 * (s0 + s1) / 2)   # mean
    assert out['metrics']['accuracy_cls'].item() == 1.5
    assert out['rois'].shape == (3, 5)
    out['losses']['loss_cls'].backward()
    assert probe.w.grad.item() == pytest.approx((s0 + s1) / 2)   # mean of per-device grads
    per_dev = CpuDataParallel(Probe(), device_ids=[torch.device('cpu')] * 2,
                              batch_outputs=False)(**b)
    assert [o['rois'].shape[0] for o in per_dev] == [1, 2]


def test_replicas_run_under_the_callers_autocast():
    probe = Probe()
    dp = CpuDataParallel(probe, device_ids=[torch.device('cpu')] * 2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        dp(**batch(2))
    assert [c['autocast'] for c in probe.calls] == [torch.bfloat16] * 2


def test_replica_error_is_raised_in_the_caller():
    class Boom(Probe):
        def forward(self, data, im_info, roidb=None):
            if data.shape[0] == 2:
                raise ValueError('bad blob')
            return super().forward(data, im_info, roidb)
    with pytest.raises(RuntimeError, match='replica 1 on cpu failed: bad blob'):
        CpuDataParallel(Boom(), device_ids=[torch.device('cpu')] * 2)(**batch(2))


@pytest.mark.cuda
def test_one_gpu_moves_inputs_and_keeps_roidb_on_cpu():
    probe = Probe()
    dp = DataParallel(probe, device_ids=[0])
    out = dp(**batch(1))
    assert probe.w.device.type == 'cuda' and probe.calls[0]['data'].is_cuda
    assert probe.calls[0]['im_info'].is_cuda
    assert probe.calls[0]['roidb'][0]['boxes'].device.type == 'cpu'
    assert out['losses']['loss_cls'].is_cuda


@pytest.mark.cuda
def test_all_gpus_replicate_and_average():
    n = torch.cuda.device_count()
    if n < 2:
        pytest.skip('needs 2 GPUs')
    probe = Probe()
    dp = DataParallel(probe, device_ids=list(range(2)))
    b = batch(2)
    out = dp(**b)
    s0, s1 = b['data'][0].sum().item(), b['data'][1].sum().item()
    assert out['losses']['loss_cls'].device == torch.device('cuda', 0)
    assert out['losses']['loss_cls'].item() == pytest.approx(2.0 * (s0 + s1) / 2)
    out['losses']['loss_cls'].backward()
    assert probe.w.grad.item() == pytest.approx((s0 + s1) / 2)
