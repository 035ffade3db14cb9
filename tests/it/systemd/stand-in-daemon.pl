#!/usr/bin/perl
# STAND-IN for `batchwatch run`, used ONLY by the systemd harness's test of itself
# (tests/it/systemd.rs), until the real daemon exists. It is not batchwatch.
#
# It does, under the real unit and its hardening, what the harness checks of the real daemon:
# reads its config and its credential, creates the queue tree and a WAL database with the
# service's umask, speaks the notify protocol from the main process (READY=1, STATUS=,
# WATCHDOG=1 every WATCHDOG_USEC/2, STOPPING=1), moves files from incoming/ to processing/
# by rename, exits 0 on SIGTERM and 78 on a configuration it refuses.
# Perl, because perl-base is in every Debian system and, unlike systemd-notify run from a
# shell, it sends notifications from the main PID, which NotifyAccess=main requires.
use strict;
use warnings;
use IO::Socket::UNIX;
use Socket qw(SOCK_DGRAM);

my $config_path = '/etc/batchwatch/batchwatch.toml';
my $state = '/var/lib/batchwatch';
my $queue = "$state/queue";

sub notify {
    my ($msg) = @_;
    my $path = $ENV{NOTIFY_SOCKET} or return;
    $path =~ s/^@/\0/;
    my $sock = IO::Socket::UNIX->new(Type => SOCK_DGRAM, Peer => $path)
        or die "stand-in: notify socket $path: $!\n";
    defined $sock->send($msg) or die "stand-in: notify: $!\n";
}

# Configuration: readable, and a stand-in for the real validation (exit 78, EX_CONFIG).
open my $cfg, '<', $config_path or do { print STDERR "stand-in: $config_path: $!\n"; exit 78 };
my $config = do { local $/; <$cfg> };
close $cfg;
if ($config =~ /no_such_key/) {
    print STDERR "stand-in: invalid configuration: unknown key no_such_key\n";
    exit 78;
}

# The credential: present and non-empty. Its bytes are never printed.
my $cred_dir = $ENV{CREDENTIALS_DIRECTORY}
    or do { print STDERR "stand-in: CREDENTIALS_DIRECTORY is not set\n"; exit 78 };
open my $key, '<', "$cred_dir/openai-api-key"
    or do { print STDERR "stand-in: credential openai-api-key: $!\n"; exit 78 };
my $key_len = length(do { local $/; <$key> } // '');
close $key;
if ($key_len == 0) { print STDERR "stand-in: credential openai-api-key is empty\n"; exit 78 }

# The queue tree and the database, as the daemon creates them.
for my $dir ($queue, map { "$queue/$_" } qw(incoming processing done failed results)) {
    next if -d $dir;
    mkdir $dir or die "stand-in: mkdir $dir: $!\n";
}
# WAL with the -wal and -shm files kept after close (SQLITE_FCNTL_PERSIST_WAL), so that
# group members can read the database read-only whether or not the daemon runs.
system('sqlite3', "$state/state.db", '.output /dev/null', 'PRAGMA journal_mode=WAL;',
    '.filectrl persist_wal 1',
    'CREATE TABLE IF NOT EXISTS standin(started_at REAL); INSERT INTO standin VALUES (unixepoch());') == 0
    or die "stand-in: sqlite3 failed: $?\n";

my $stop = 0;
$SIG{TERM} = sub { $stop = 1 };
$SIG{INT} = sub { $stop = 1 };

print STDERR "stand-in: started, credential of $key_len bytes read\n";
notify("READY=1\nSTATUS=stand-in ready");

# The loop turns every 200 ms (perl-base has no Time::HiRes); the watchdog is pinged every
# WATCHDOG_USEC/2, counted in turns.
my $turn_usec = 200_000;
my $ping_every = $ENV{WATCHDOG_USEC} ? int($ENV{WATCHDOG_USEC} / 2 / $turn_usec) || 1 : 0;
my $turn = 0;
my $claimed = 0;
until ($stop) {
    notify('WATCHDOG=1') if $ping_every && $turn++ % $ping_every == 0;
    opendir my $in, "$queue/incoming" or die "stand-in: $queue/incoming: $!\n";
    for my $name (grep { !/^\./ && -f "$queue/incoming/$_" } readdir $in) {
        rename "$queue/incoming/$name", "$queue/processing/$name"
            or die "stand-in: claiming $name: $!\n";
        # Read it, as the daemon does to validate and upload it: the group's read bit is all
        # the daemon has on a file another user dropped.
        open my $claimed_file, '<', "$queue/processing/$name"
            or die "stand-in: reading $name: $!\n";
        my $size = length(do { local $/; <$claimed_file> } // '');
        close $claimed_file;
        $claimed++;
        notify("STATUS=stand-in claimed $claimed, last $name of $size bytes");
    }
    closedir $in;
    select(undef, undef, undef, $turn_usec / 1e6);
}
notify("STOPPING=1\nSTATUS=stand-in stopping");
print STDERR "stand-in: stopped\n";
exit 0;
