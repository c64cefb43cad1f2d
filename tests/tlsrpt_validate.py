#!/usr/bin/env python3
"""Validates TLS-RPT reports (RFC 8460) against tests/tlsrpt-schema.json.

Usage: tlsrpt_validate.py SCHEMA < report.json
Exit 0 when valid; 1 with the errors on stdout when not; 2 when jsonschema is missing.
"""
import json
import sys

try:
    import jsonschema
except ImportError:
    print("jsonschema is not installed", file=sys.stderr)
    sys.exit(2)

with open(sys.argv[1], encoding="utf-8") as f:
    schema = json.load(f)
report = json.load(sys.stdin)
cls = jsonschema.Draft7Validator
cls.check_schema(schema)
errors = sorted(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(report), key=str)
for e in errors:
    print(f"{list(e.absolute_path)}: {e.message}")
sys.exit(1 if errors else 0)
