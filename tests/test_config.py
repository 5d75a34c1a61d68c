"""Tests for meshd.config: parsing, checks, error messages and override order."""

from __future__ import annotations

import dataclasses
import json
import os

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from meshd.config import (
    Config,
    ConfigError,
    DbExpire,
    Settings,
    load_config,
    parse_config,
    reference_markdown,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ParseTests(SynchronousTestCase):
    def problems(self, data: object) -> list[str]:
        with self.assertRaises(ConfigError) as cm:
            parse_config(data)
        return cm.exception.problems

    def test_empty_gives_defaults(self) -> None:
        """An empty object gives MeshCentral's default ports and the default domain."""
        config = parse_config({})
        self.assertEqual((config.settings.port, config.settings.redir_port,
                          config.settings.mps_port), (443, 80, 4433))
        self.assertEqual(list(config.domains), [""])
        self.assertEqual(config.settings.db_expire, DbExpire(1728000, 864000, 2592000))
        self.assertIsNone(config.letsencrypt)

    def test_keys_are_case_insensitive(self) -> None:
        """`MPSPORT`, `mpsport` and `mpsPort` are the same key."""
        for key in ("MPSPORT", "mpsport", "mpsPort"):
            self.assertEqual(parse_config({"Settings": {key: 1234}}).settings.mps_port, 1234)

    def test_underscore_keys_are_comments(self) -> None:
        """Keys starting with `_` are ignored with everything under them."""
        config = parse_config({"__comment__": "x", "settings": {"_port": "nonsense",
                                                                 "_sub": {"bad": 1}}})
        self.assertEqual(config.settings.port, 443)
        self.assertEqual(config.warnings, ())

    def test_nested_sections(self) -> None:
        """Nested objects, domains and letsencrypt become typed frozen objects."""
        config = parse_config({
            "settings": {"dbExpire": {"events": 60, "powerevents": 30},
                         "maxInvalidLogin": {"count": 3}},
            "domains": {"": {"title": "Acme"}, "customer1": {"title2": "c1",
                                                              "newAccounts": True}},
            "letsencrypt": {"email": "a@example.com", "names": "example.com",
                            "production": True},
        })
        self.assertEqual(config.settings.db_expire.events, 60)
        self.assertEqual(config.settings.db_expire.power_events, 30)
        self.assertEqual(config.settings.max_invalid_login.count, 3)
        self.assertEqual(config.default_domain.title, "Acme")
        self.assertTrue(config.domains["customer1"].new_accounts)
        self.assertEqual(config.letsencrypt.names, "example.com")  # type: ignore[union-attr]
        with self.assertRaises(dataclasses.FrozenInstanceError):
            config.settings.port = 1  # type: ignore[misc]
        with self.assertRaises(TypeError):
            config.domains["x"] = config.default_domain  # type: ignore[index]

    def test_default_domain_added(self) -> None:
        """A file that names only other domains still gets the default domain."""
        config = parse_config({"domains": {"other": {}}})
        self.assertEqual(sorted(config.domains), ["", "other"])

    def test_unknown_key_suggests(self) -> None:
        """An unknown key is reported by its path with the nearest known key."""
        self.assertEqual(self.problems({"settings": {"prot": 443}}),
                         ["settings.prot: unknown key, did you mean port?"])
        self.assertEqual(self.problems({"domains": {"x": {"titel": "a"}}}),
                         ["domains.x.titel: unknown key, did you mean title?"])
        self.assertEqual(self.problems({"settings": {"dbExpire": {"evnts": 1}}}),
                         ["settings.dbExpire.evnts: unknown key, did you mean events?"])

    def test_unknown_key_without_suggestion(self) -> None:
        """An unknown key with nothing close gets no suggestion."""
        self.assertEqual(self.problems({"settings": {"zzzzqqq": 1}}),
                         ["settings.zzzzqqq: unknown key"])
        self.assertEqual(self.problems({"nosuchsection": {}}),
                         ["nosuchsection: unknown key"])

    def test_meshcentral_options_warn(self) -> None:
        """MeshCentral options meshd does not implement are accepted with a warning."""
        config = parse_config({"$schema": "x", "settings": {"WebRTC": True, "port": 444},
                               "domains": {"": {"footer": "f"}}})
        self.assertEqual(config.settings.port, 444)
        self.assertEqual(config.warnings, (
            "$schema: MeshCentral option not supported by meshd; ignored",
            "settings.WebRTC: MeshCentral option not supported by meshd; ignored",
            "domains..footer: MeshCentral option not supported by meshd; ignored",
        ))

    def test_options_without_effect_warn(self) -> None:
        """MeshCentral's filesPath, sessionKey and userNameIsEmail, and meshd's own redis
        (not built yet), are accepted with a warning instead of silently."""
        config = parse_config({"settings": {"filesPath": "/srv/files", "sessionKey": "k",
                                            "redis": "redis://127.0.0.1:6379/0"},
                               "domains": {"": {"userNameIsEmail": True}}})
        self.assertEqual(config.warnings, (
            "settings.filesPath: MeshCentral option not supported by meshd; ignored",
            "settings.sessionKey: MeshCentral option not supported by meshd; ignored",
            "domains..userNameIsEmail: MeshCentral option not supported by meshd; ignored",
            "settings.redis: several meshd servers sharing Redis are not supported yet; "
            "this server runs alone",
        ))

    def test_wrong_types(self) -> None:
        """A wrong type names the key, the expected type and what was given."""
        self.assertEqual(self.problems({"settings": {"port": "443"}}),
                         ["settings.port: expected an integer, got a string"])
        self.assertEqual(self.problems({"settings": {"fastCert": 1}}),
                         ["settings.fastCert: expected true or false, got a number"])
        self.assertEqual(self.problems({"settings": {"port": True}}),
                         ["settings.port: expected an integer, got true"])
        self.assertEqual(self.problems({"settings": {"cert": ["a"]}}),
                         ["settings.cert: expected a string, got a list"])
        self.assertEqual(self.problems({"settings": []}),
                         ["settings: expected an object, got a list"])
        self.assertEqual(self.problems([1]), ["the file: expected an object, got a list"])

    def test_wrong_values(self) -> None:
        """A value out of range names the key and what is expected."""
        self.assertEqual(self.problems({"settings": {"port": 70000}}),
                         ["settings.port: expected a port number from 0 to 65535, got 70000"])
        self.assertEqual(self.problems({"settings": {"portBind": "localhost"}}),
                         ['settings.portBind: expected an IP address such as 127.0.0.1 or ::1,'
                          ' or "" for all addresses, got "localhost"'])
        self.assertEqual(self.problems({"letsencrypt": {"rsaKeySize": 1024}}),
                         ["letsencrypt.rsaKeySize: expected 2048 or 3072, got 1024"])
        self.assertEqual(self.problems({"settings": {"cert": "a b"}}),
                         ['settings.cert: expected a host name or IP address, got "a b"'])

    def test_all_problems_reported(self) -> None:
        """Every problem is reported at once, one a line."""
        problems = self.problems({"settings": {"prot": 1, "port": "x", "mpsPort": -1}})
        self.assertEqual(len(problems), 3)
        with self.assertRaises(ConfigError) as cm:
            parse_config({"settings": {"prot": 1, "port": "x"}})
        self.assertEqual(str(cm.exception).count("\n"), 1)

    def test_duplicate_key(self) -> None:
        """The same key twice in different case is an error, not a silent pick."""
        self.assertEqual(self.problems({"settings": {"port": 1, "PORT": 2}}),
                         ["settings.PORT: given twice (keys are case-insensitive)"])

    def test_null_for_optional(self) -> None:
        """null is accepted for optional keys and keeps the default."""
        self.assertIsNone(parse_config({"settings": {"mongoDb": None}}).settings.mongodb)


class OverrideTests(SynchronousTestCase):
    def test_override_replaces_file_value(self) -> None:
        """Command-line overrides win over the file, whatever the file's key case."""
        config = parse_config({"settings": {"PORT": 1000, "redirport": 81}},
                              {"port": ("--port", 2000)})
        self.assertEqual(config.settings.port, 2000)
        self.assertEqual(config.settings.redir_port, 81)

    def test_override_error_names_option(self) -> None:
        """A bad command-line value is reported with the option's name."""
        with self.assertRaises(ConfigError) as cm:
            parse_config({}, {"portBind": ("--bind", "nope")})
        self.assertEqual(cm.exception.problems,
                         ['--bind: expected an IP address such as 127.0.0.1 or ::1, or "" for '
                          'all addresses, got "nope"'])


class LoadTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return path.path

    def test_invalid_json_line_and_column(self) -> None:
        """Invalid JSON is reported with the file, line and column."""
        path = self.write('{\n  "settings": {\n    "port": 443,\n  }\n}\n')
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        self.assertEqual(str(cm.exception),
                         f"{path}: invalid JSON at line 4, column 3: "
                         "Expecting property name enclosed in double quotes")

    def test_problems_prefixed_with_file(self) -> None:
        """Schema problems in a file are prefixed with its path."""
        path = self.write('{"settings": {"prot": 1}}')
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        self.assertEqual(str(cm.exception), f"{path}: settings.prot: unknown key, did you mean port?")

    def test_missing_file(self) -> None:
        """A missing file is a clear error."""
        path = self.mktemp()
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        self.assertEqual(str(cm.exception),
                         f"{path}: cannot read the configuration file: No such file or directory")

    def test_bom_accepted(self) -> None:
        """A UTF-8 byte-order mark (Windows editors) is accepted."""
        path = FilePath(self.mktemp())
        path.setContent(b'\xef\xbb\xbf{"settings": {"port": 8443}}')
        self.assertEqual(load_config(path.path).settings.port, 8443)

    def test_meshcentral_sample_shape(self) -> None:
        """A MeshCentral-style file with comments, $schema and unimplemented options loads."""
        path = self.write(json.dumps({
            "$schema": "https://example.invalid/schema.json",
            "__comment__": "sample",
            "settings": {"cert": "mesh.example.com", "_mongoDb": "mongodb://x", "WANonly": True,
                         "port": 443, "redirPort": 80, "AgentPong": 300},
            "domains": {"": {"title": "MyServer", "_title2": "x", "NewAccounts": True}},
            "_letsencrypt": {"email": "x"},
        }))
        config = load_config(path)
        self.assertEqual(config.settings.cert, "mesh.example.com")
        self.assertTrue(config.default_domain.new_accounts)
        self.assertEqual(len(config.warnings), 3)

    def test_defaults_without_file(self) -> None:
        """No file gives the defaults, then the overrides."""
        config = load_config(None, {"mpsPort": ("--mpsport", 0)})
        self.assertEqual(config.settings.mps_port, 0)
        self.assertEqual(config, dataclasses.replace(
            Config(), settings=dataclasses.replace(Settings(cert=config.settings.cert),
                                                   mps_port=0)))


class ReferenceTests(SynchronousTestCase):
    def test_docs_table_is_current(self) -> None:
        """docs/configuration.md contains the table generated from the schema."""
        with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as f:
            text = f.read()
        self.assertIn(reference_markdown(), text,
                      "regenerate with: python -m meshd.config (and paste into "
                      "docs/configuration.md)")

    def test_every_key_documented(self) -> None:
        """Every schema key has documentation text."""
        for line in reference_markdown().splitlines()[2:]:
            self.assertTrue(line.rstrip(" |").split("|")[-1].strip(), line)
