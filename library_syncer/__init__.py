"""library-syncer: pull a VMware content library over rsync+SSH, publish it to vCenter."""

__version__ = "0.6.0"
