# Process and port helpers shared by tools/demo.sh, the bench lanes
# (bench/lib.bash) and the OpenResty tests (sourced, not run).
#
#   alive PID            the process runs (an exited child not yet reaped
#                        does not count, as it would for kill -0)
#   stop_pid PID SIGNAL  signals PID, waits up to 10 s, then KILLs it and
#                        the children it had; reaps it
#   free_port            a TCP port of 127.0.0.1 nothing listens on now
#                        (a server may still lose it to a race: retry)

alive() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $stat != Z* ]]
}

stop_pid() {
  local pid=$1 kids k
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null)
  kill -"$2" "$pid" 2>/dev/null
  for _ in $(seq 1 200); do alive "$pid" || break; sleep 0.05; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  for k in $kids; do kill -KILL "$k" 2>/dev/null; done
  return 0
}

free_port() {
  perl -MIO::Socket::INET -e '
    for (1 .. 50) {
      my $port = 20000 + int(rand(40000));
      my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $port,
                                    Proto => "tcp", Listen => 1, ReuseAddr => 1) or next;
      close $s;
      print $port;
      exit 0;
    }
    exit 1'
}
