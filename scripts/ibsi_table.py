"""Print (or write) the IBSI conformance table of radfusion's PyRadiomics features on the IBSI-1 phantom.

    python scripts/ibsi_table.py                       # Markdown table on stdout
    python scripts/ibsi_table.py --csv ibsi.csv        # also as CSV
    python scripts/ibsi_table.py --data /path/to/ibsi  # another copy of the phantom folder

The table of ``docs/ibsi.md`` is this script's output; ``tests/test_ibsi.py`` checks the same numbers.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from radfusion.radiomics.ibsi import PHANTOM_PARAMS, conformance, markdown_table, read_reference
from radfusion.radiomics.pyrad import extract_region

SHARED = Path(os.environ.get("RADFUSION_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DEFAULT = SHARED / "ibsi"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT, help="folder with the phantom and reference values")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    args = parser.parse_args()
    features = extract_region(args.data / "digital_phantom_image.nii.gz", args.data / "digital_phantom_mask.nii.gz",
                              PHANTOM_PARAMS)
    table = conformance(features, read_reference(args.data / "reference_values_digital_phantom.csv"))
    print(markdown_table(table))
    print(f"\n{int(table['pass'].sum())} of {len(table)} mapped features within the IBSI tolerance")
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
