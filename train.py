#!/usr/bin/env python3
"""train.py: not implemented yet."""

import sys


def main():
    sys.exit("train.py: error: not implemented yet; see README.md for what works today")


if __name__ == "__main__":
    main()
