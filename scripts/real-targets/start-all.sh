#!/bin/sh
# After a reboot (PostgreSQL must be up for Redmine): start everything.
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/start-mailbox.sh"; "$HERE/start-redmine.sh"; "$HERE/start-rt.sh"; "$HERE/start-bridges.sh"
