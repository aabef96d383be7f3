"""Validates a file against a schema, for residue's integration tests.

    python3 validate.py sarif SCHEMA.json FILE.sarif
    python3 validate.py junit SCHEMA.xsd FILE.xml

Exit 0 and prints "valid" when the file conforms; exit 1 with every violation otherwise.
"""

import json
import sys


def main():
    what, schema, path = sys.argv[1:4]
    errors = []
    if what == "sarif":
        import jsonschema

        with open(schema) as f:
            s = json.load(f)
        with open(path) as f:
            doc = json.load(f)
        validator = jsonschema.validators.validator_for(s)(s)
        validator.check_schema(s)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    elif what == "junit":
        import xmlschema

        xs = xmlschema.XMLSchema(schema)
        errors = [str(e) for e in xs.iter_errors(path)]
    else:
        sys.exit(f"unknown format {what}")
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print("valid")


main()
