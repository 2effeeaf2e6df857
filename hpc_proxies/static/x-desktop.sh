#!/bin/sh
# An X desktop, as a VNC server's wrapper script starts one, in a few lines of sh
# (TigerVNC's perl wrapper took 12 MiB per desktop): the X server on a free display,
# then the session on it. The desktop ends when the session does. From hpc-proxies.
#
#   sh x-desktop.sh DIR XSTARTUP XSERVER [ARGS...]
#
# DIR is the launch's private directory: a FIFO there carries the display number the
# X server took (-displayfd), so no number is guessed or shared with another desktop.
set -u
dir=$1 xstartup=$2
shift 2
fifo="$dir/displayfd"
rm -f "$fifo"
mkfifo -m 600 "$fifo" || exit 1
"$@" -displayfd 3 3>"$fifo" &
server=$!
if ! read -r number <"$fifo"; then
    echo "x-desktop.sh: $1 did not start" >&2
    wait "$server"
    exit 1
fi
rm -f "$fifo"
DISPLAY=":$number" "$xstartup" &
session=$!
trap 'kill -TERM "$session" "$server" 2>/dev/null' TERM INT HUP
wait "$session"
if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server"
    exit 0
fi
wait "$server"
