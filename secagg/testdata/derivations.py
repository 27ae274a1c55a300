"""An independent reimplementation of cairn-secagg's derived protocol values (the graph's
permutation and neighbours, the round context, nonce commitments and graph seed, the session id, the mask and
channel keys, the byte layouts that are signed or authenticated, Shamir shares made by hand),
written from the crate's doc comments with Python's standard library only. It prints the
expected outputs that the crate's tests pin (graph.rs, mask.rs, shamir.rs, protocol/tests.rs);
run it with `python3 derivations.py`.

A change in its output is a change of the protocol: every party of a round must derive the same
values, whatever its build."""
import hashlib, hmac, struct

def sha256(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()

def be64(x): return struct.pack(">Q", x)
def be32(x): return struct.pack(">I", x)

def hkdf(ikm, salt, info, length):
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, c = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([c]), hashlib.sha256).digest()
        out += block
        c += 1
    return out[:length]

def permutation(n, seed):
    words = []
    counter = 0
    def word():
        nonlocal counter
        if not words:
            block = sha256(b"cairn-secagg graph permutation v1", seed, be64(counter))
            counter += 1
            words.extend(struct.unpack(">8I", block))
        return words.pop(0)
    def below(bound):
        limit = 2**32 - (2**32 % bound)
        while True:
            w = word()
            if w < limit:
                return w % bound
    labels = list(range(n))
    for i in range(n - 1, 0, -1):
        j = below(i + 1)
        labels[i], labels[j] = labels[j], labels[i]
    return labels

def regular(n, degree, seed):
    if degree >= n - 1: return [sorted(set(range(n)) - {i}) for i in range(n)]
    if degree % 2 == 1 and n % 2 == 1: degree += 1
    if degree >= n - 1: return [sorted(set(range(n)) - {i}) for i in range(n)]
    labels = permutation(n, seed)
    nb = [set() for _ in range(n)]
    for p in range(n):
        for off in range(1, degree // 2 + 1):
            nb[labels[p]].add(labels[(p + off) % n])
            nb[labels[p]].add(labels[(p - off) % n])
        if degree % 2 == 1:
            nb[labels[p]].add(labels[(p + n // 2) % n])
    return [sorted(s) for s in nb]

def lp(b): return be64(len(b)) + b

def context(job, rnd, attempt, roster, degree, threshold, vector_len):
    parts = [b"cairn secagg round setup v3", lp(job.encode()), lp(be64(rnd)), lp(be32(attempt)),
             be64(len(roster))]
    parts += [lp(i.encode()) for i in roster]
    parts += [be32(degree), be64(threshold), be64(vector_len)]
    return sha256(*parts)

def private_context(ctx, clip_norm, noise_multiplier, min_contributors):
    """RoundConfig::with_privacy: the noise settings bound into the context."""
    return sha256(b"cairn secagg differential privacy v1", ctx, struct.pack(">f", clip_norm),
                  struct.pack(">d", noise_multiplier), be32(min_contributors))

def graph_seed(ctx, nonces):
    parts = [b"cairn secagg graph seed v1", ctx]
    for index in sorted(nonces):
        parts += [be32(index), nonces[index]]
    return sha256(*parts)

def nonce_commitment(ctx, index, nonce): return sha256(b"cairn secagg graph nonce v1", ctx, be32(index), nonce)

def session(job, rnd, keys):
    parts = [b"cairn-secagg session v1", be64(len(job)), job.encode(), be64(rnd)]
    for index, ck, mk in sorted(keys):
        parts += [be32(index), ck, mk]
    return sha256(*parts)

def self_mask_key(seed, sid, p): return hkdf(seed, sid, b"cairn self mask" + be32(p), 16)
def pairwise_mask_key(secret, sid, a, b):
    lo, hi = min(a, b), max(a, b)
    return hkdf(secret, sid, b"cairn pairwise mask" + be32(lo) + be32(hi), 16)
def channel_key(secret, sid, f, t): return hkdf(secret, sid, b"cairn channel" + be32(f) + be32(t), 32)

def gf256_mul(a, b):
    """Multiplication in GF(256) with the AES polynomial x^8 + x^4 + x^3 + x + 1."""
    product = 0
    while b:
        if b & 1:
            product ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return product

def shamir_share(secret, x, coefficients):
    """Share `x` of `secret`, byte by byte: byte i of the share is f_i(x) with
    f_i(x) = secret[i] + sum_k coefficients(i)[k] * x^(k+1); the identifier x comes first."""
    out = [x]
    for i, s in enumerate(secret):
        y, power = s, 1
        for c in coefficients(i):
            power = gf256_mul(power, x)
            y ^= gf256_mul(c, power)
        out.append(y)
    return bytes(out)

def header(label, job, rnd, ctx): return label + be64(len(job)) + job.encode() + be64(rnd) + ctx

if __name__ == "__main__":
    h = lambda b: b.hex()
    seq = bytes(range(32))
    print("perm 10 zero", permutation(10, bytes(32)))
    print("perm 16 seq", permutation(16, seq))
    print("regular 12 4 seq", regular(12, 4, seq))
    print("regular 10 3 seq", regular(10, 3, seq))
    print("regular 9 3 zero", regular(9, 3, bytes(32)))
    roster = ["alice", "bob", "carol", "dave"]
    roster10 = ["participant-%d" % i for i in range(10)]
    ctx10 = context("job", 7, 2, roster10, 4, 3, 1000)
    nonces10 = {i: bytes([i]*32) for i in range(10) if i != 4}
    print("context10", h(ctx10))
    print("private context10 (clip 1.5, z 0.75, m 6)", h(private_context(ctx10, 1.5, 0.75, 6)))
    print("commitment10 of 3", h(nonce_commitment(ctx10, 3, bytes([3]*32))))
    print("seed10", h(graph_seed(ctx10, nonces10)))
    print("derived graph10", regular(10, 4, graph_seed(ctx10, nonces10)))
    keys = [(1, bytes([3]*32), bytes([4]*32)), (0, bytes([1]*32), bytes([2]*32))]
    sid = session("job", 1, keys)
    print("session", h(sid))
    print("self mask key", h(self_mask_key(bytes([9]*32), sid, 5)))
    print("pairwise mask key", h(pairwise_mask_key(bytes([8]*32), sid, 5, 2)))
    print("channel key", h(channel_key(bytes([7]*32), sid, 2, 5)))
    print("adv", h(header(b"cairn secagg advertise v2", "job", 7, bytes([0xaa]*32)) + be32(2) + bytes([1]*32) + bytes([2]*32) + bytes([3]*32)))
    print("surv", h(header(b"cairn secagg survivors v1", "job", 7, bytes([0xaa]*32)) + be32(0) + be32(2) + be32(3)))
    secret = bytes(range(32))
    for x in (2, 3):
        print("shamir t=2 share", x, h(shamir_share(secret, x, lambda i: [(0x53 + i) & 0xFF])))
    for x in (1, 4, 255):
        print("shamir t=3 share", x,
              h(shamir_share(secret, x, lambda i: [0xCA ^ i, (1 + 7 * i) & 0xFF or 1])))
    print("aad", h(header(b"cairn secagg shares v2", "job", 7, bytes([0xaa]*32)) + bytes([0xbb]*32) + be32(2) + be32(5)))
