"""archsearch.encoders and the Encoder protocol: a timm model measured beside the searchable specs."""
from archsearch.build import describe
from archsearch.cli import main
from archsearch.encoders import TimmEncoder
from archsearch.references import get_reference, load_spec
from archsearch.encoders import Encoder
from archsearch.spec import ArchSpec


def test_both_kinds_are_encoders_and_load_spec_says_so():
    vit, hd = load_spec("timm:vit_small_patch16_224"), load_spec("fastvithd")
    assert isinstance(vit, TimmEncoder) and isinstance(hd, ArchSpec)
    assert isinstance(vit, Encoder) and isinstance(hd, Encoder)
    assert hd.channels(1024) == hd.out_channels == get_reference("fastvithd").spec.out_channels


def test_a_reference_encoder_is_described_from_its_own_forward(capsys):
    info = describe(load_spec("timm:vit_small_patch16_224"), (224, 224), verify=True)
    assert (info["grid"], info["tokens"], info["channels"]) == ([14, 14], 196, 384)
    # The command line too (it used to stop with a traceback: a timm model has no out_channels).
    assert main(["build", "timm:vit_small_patch16_224", "-r", "224", "--json"]) == 0
    assert '"channels": 384' in capsys.readouterr().out


def test_the_proxies_refuse_a_reference_encoder_in_one_line(capsys):
    assert main(["proxy", "timm:vit_small_patch16_224"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reference encoder" in err
