"""sslstudy.config: the schema is parsed once per process and handed out as fresh copies."""
import yaml

from sslstudy import config


def test_schema_is_parsed_once_same_as_pure_python_yaml_and_copied():
    reference = yaml.load(config.SCHEMA.read_text(), Loader=yaml.SafeLoader)   # the pure-Python parser
    a = config.load_schema()
    assert a == reference
    a["properties"].clear()                       # a caller's change does not leak into the next one
    assert config.load_schema() == reference
    config.load_schema()
    assert config._schema.cache_info().misses == 1
