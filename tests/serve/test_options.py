"""gradex serve's settings as the command line gives them."""

import pytest

from gradex.serve.options import ServeOptions


def test_a_timm_model_is_served_under_its_name_without_the_prefix():
    # The URL's model name cannot hold the ':' of --model timm:NAME.
    assert ServeOptions(model="timm:resnet18.a1_in1k").check().model_name == "resnet18.a1_in1k"
    assert ServeOptions(model="timm:resnet18", name="parts").check().model_name == "parts"
    with pytest.raises(ValueError, match="--name 'a:b': a model name has no '/' or ':'"):
        ServeOptions(name="a:b").check()
