#!/usr/bin/env python3
"""sample.py: not implemented yet."""

import sys


def main():
    sys.exit("sample.py: error: not implemented yet; see README.md for what works today")


if __name__ == "__main__":
    main()
