<?php
// A lock on lockd from PHP, over the legacy protocol, signed as MediaWiki's LSLockManager
// signs it. In a MediaWiki farm you need none of this: LSLockManager already does it (see
// the README's "Pointing MediaWiki at lockd"). This is for PHP programs outside MediaWiki,
// and for reading what LSLockManager sends.
//
// usage: php lock.php HOST PORT AUTH_KEY RESOURCE
// Takes an EX lock on RESOURCE, prints "ACQUIRED <key>", holds it until standard input
// ends (or is a line), then releases it and prints "RELEASED".

// MediaWiki's key for a resource: the SHA-1 of its path in base 36, 31 digits, zero-padded
// (Wikimedia\base_convert(sha1($path), 16, 36, 31)). Done digit by digit: PHP's own
// base_convert goes through a float and loses the low digits of a 160-bit number.
function lockd_key(string $resource): string {
    $digits = array_map('hexdec', str_split(sha1($resource)));
    $out = '';
    while ($digits) {
        $rest = [];
        $carry = 0;
        foreach ($digits as $d) {
            $carry = $carry * 16 + $d;
            $q = intdiv($carry, 36);
            $carry %= 36;
            if ($rest || $q) {
                $rest[] = $q;
            }
        }
        $out = base_convert((string)$carry, 10, 36) . $out;
        $digits = $rest;
    }
    return str_pad($out, 31, '0', STR_PAD_LEFT);
}

// One request, one reply line. The signature is LSLockManager's: HMAC-SHA1 keyed with the
// shared secret over the four fields joined by newlines.
function lockd_call($conn, string $authKey, string $session, string $cmd, string $type, string $values): string {
    $sig = hash_hmac('sha1', "$session\n$cmd\n$type\n$values", $authKey);
    fwrite($conn, "$session:$sig:$cmd:$type:$values\n");
    $reply = fgets($conn);
    if ($reply === false) {
        fwrite(STDERR, "lockd closed the connection\n");
        exit(1);
    }
    return rtrim($reply);
}

if ($argc !== 5) {
    fwrite(STDERR, "usage: php lock.php HOST PORT AUTH_KEY RESOURCE\n");
    exit(2);
}
[, $host, $port, $authKey, $resource] = $argv;
$conn = stream_socket_client("tcp://$host:$port", $errno, $errstr, 5);
if ($conn === false) {
    fwrite(STDERR, "cannot connect to $host:$port: $errstr\n");
    exit(1);
}
// A session is 32 bytes; LSLockManager makes one per request batch, any random text works.
$session = bin2hex(random_bytes(16));
$key = lockd_key($resource);

$reply = lockd_call($conn, $authKey, $session, 'ACQUIRE', 'EX', $key);
if ($reply !== 'ACQUIRED') {
    // CANT_ACQUIRE (someone holds it), TOO_MANY_LOCKS, or BAD_KEY (wrong AUTH_KEY).
    fwrite(STDERR, "not acquired: $reply\n");
    exit(1);
}
echo "ACQUIRED $key\n";
fgets(STDIN); // Hold the lock until told to let go.
echo lockd_call($conn, $authKey, $session, 'RELEASE', 'EX', $key), "\n";
