#!/usr/bin/env python3
"""Where channels fall in a three-primary Redis Cluster (issue 9, scripts/bench-redis-publish.sh).

A channel's keys are `<prefix>:meta:{channel}` (the channel name is the hash tag), so its slot
is CRC16(channel) mod 16384, the CRC16 Redis Cluster uses (XMODEM: polynomial 0x1021, initial
value 0). `redis-cli --cluster create` with three primaries gives them the slots 0-5460,
5461-10922 and 10923-16383 (scripts/redis-cluster.sh).

  scripts/redis-slots.py spread PATTERN [N]   N channels (default 1000) named PATTERN with {i}
                                              replaced by 0..N-1: count per shard, max/mean
  scripts/redis-slots.py pick PREFIX          one channel name per shard, PREFIX-<k> for the
                                              smallest k landing there, one a line
  scripts/redis-slots.py slot NAME...         each name's slot and shard
"""
import sys

SHARDS = [(0, 5460), (5461, 10922), (10923, 16383)]


def crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot(channel: str) -> int:
    # The channel is the hash tag of `<prefix>:meta:{channel}`; a `}` in it ends the tag early,
    # as Redis reads it (one at its start would hash the whole key: not a bench name).
    tag = channel.split("}", 1)[0]
    if not tag:
        raise ValueError(f"channel {channel!r} starts with '}}': its slot depends on the prefix")
    return crc16(tag.encode()) % 16384


def shard(channel: str) -> int:
    s = slot(channel)
    return next(i for i, (lo, hi) in enumerate(SHARDS) if lo <= s <= hi)


def main(argv):
    if len(argv) >= 2 and argv[0] == "spread":
        n = int(argv[2]) if len(argv) > 2 else 1000
        counts = [0] * len(SHARDS)
        for i in range(n):
            counts[shard(argv[1].replace("{i}", str(i)))] += 1
        mean = n / len(SHARDS)
        print(f"{argv[1]} x{n}: per shard {' / '.join(map(str, counts))}, "
              f"max/mean {max(counts) / mean:.3f} (+{(max(counts) / mean - 1) * 100:.1f}%)")
    elif len(argv) == 2 and argv[0] == "pick":
        for want in range(len(SHARDS)):
            k = 0
            while shard(f"{argv[1]}-{k}") != want:
                k += 1
            print(f"{argv[1]}-{k}")
    elif len(argv) >= 2 and argv[0] == "slot":
        for name in argv[1:]:
            print(name, slot(name), shard(name))
    else:
        print(__doc__.strip(), file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
