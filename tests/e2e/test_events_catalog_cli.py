"""`linkledger events catalog`: every event type with its JSON Schema, subject and CloudEvents type."""

import json
import subprocess
import sys

from events.catalog import catalog


def test_the_catalog_command_lists_every_event_type_with_schema_and_subject():
    done = subprocess.run([sys.executable, "-m", "service.cli", "events", "catalog", "--json"],
                          capture_output=True, text=True, timeout=60, check=True)
    entries = {e["type"]: e for e in json.loads(done.stdout)}
    assert set(entries) == {cls.type for cls in catalog()}
    assert entries["AccountNeedsReauth"]["subject"] == "linkledger.<environment>.<integration>.AccountNeedsReauth"
    assert entries["AccountNeedsReauth"]["cloudevents_type"] == "io.linkledger.AccountNeedsReauth.v1"
    assert entries["IntegrationFlagged"]["subject"] == "linkledger.<environment>._integration.<integration>.IntegrationFlagged"
    assert entries["EnvironmentOverrideChanged"]["subject"] == "linkledger.<environment>._environment.EnvironmentOverrideChanged"
    for entry in entries.values():
        assert entry["schema"]["type"] == "object" and entry["schema"]["properties"]
    text = subprocess.run([sys.executable, "-m", "service.cli", "events", "catalog"], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    assert "subject:    linkledger.<environment>.<integration>.TokenRefreshed" in text
