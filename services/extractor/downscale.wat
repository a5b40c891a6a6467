;; The two passes of downscale.ts's cover downscale, in WebAssembly SIMD (issue 14).
;;
;; Source of downscale.wasm.ts: `npm run build:wasm` compiles it (with the wabt package) and
;; test/wasm-build.test.ts checks that the embedded bytes are this file's. The arithmetic is exactly
;; downscale.ts's JavaScript passes, which the tests hold byte for byte against libvips's reducev
;; and reduceh (lanczos3 masks in 1/4096, int16):
;;
;;   out = clamp₀²⁵⁵((Σₖ in[k] · w[k] + 2048) >> 12)
;;
;; Samples are uint8 and weights int16, so every product and sum is an exact int32; the two
;; saturating narrows (i32 → i16, i16 → u8) are the clamp.
(module
  (memory (export "memory") 1)

  ;; Vertical pass (reducev): `rows` output rows of `len` bytes. Output row y's taps are at
  ;; $taps + y·m·6 (m taps, an even number: a last tap of weight 0 pads an odd mask): m int32 byte
  ;; offsets (from $src) of the source rows' first sample, then m/2 int32 pairs of int16 weights.
  ;; 32 samples per step, every tap summed before the next step. Two taps at a time: their rows'
  ;; bytes interleaved and widened to int16, one dot product gives a·w₀ + b·w₁ per sample. A row
  ;; whose length is not a multiple of 32 writes up to 31 bytes past its end (the caller leaves
  ;; room, and 32 readable bytes after the last source row).
  (func (export "reducev")
    (param $src i32) (param $len i32) (param $taps i32) (param $m i32) (param $rows i32)
    (param $out i32) (param $outStride i32)
    (local $y i32) (local $x i32) (local $t i32) (local $k i32) (local $o i32) (local $tw i32)
    (local $sx i32) (local $pa i32) (local $pb i32)
    (local $a v128) (local $b v128) (local $w v128) (local $lo v128) (local $hi v128)
    (local $s0 v128) (local $s1 v128) (local $s2 v128) (local $s3 v128)
    (local $s4 v128) (local $s5 v128) (local $s6 v128) (local $s7 v128) (local $half v128)
    (local.set $half (i32x4.splat (i32.const 2048)))
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.ge_u (local.get $y) (local.get $rows)))
        (local.set $t (i32.add (local.get $taps) (i32.mul (i32.mul (local.get $y) (local.get $m)) (i32.const 6))))
        (local.set $tw (i32.add (local.get $t) (i32.shl (local.get $m) (i32.const 2))))
        (local.set $o (i32.add (local.get $out) (i32.mul (local.get $y) (local.get $outStride))))
        (local.set $x (i32.const 0))
        (block $cols_done
          (loop $cols
            (br_if $cols_done (i32.ge_u (local.get $x) (local.get $len)))
            (local.set $sx (i32.add (local.get $src) (local.get $x)))
            (local.set $s0 (local.get $half))
            (local.set $s1 (local.get $half))
            (local.set $s2 (local.get $half))
            (local.set $s3 (local.get $half))
            (local.set $s4 (local.get $half))
            (local.set $s5 (local.get $half))
            (local.set $s6 (local.get $half))
            (local.set $s7 (local.get $half))
            (local.set $k (i32.const 0))
            (block $taps_done
              (loop $tap
                (br_if $taps_done (i32.ge_u (local.get $k) (local.get $m)))
                (local.set $pa (i32.add (local.get $sx) (i32.load (i32.add (local.get $t) (i32.shl (local.get $k) (i32.const 2))))))
                (local.set $pb (i32.add (local.get $sx) (i32.load offset=4 (i32.add (local.get $t) (i32.shl (local.get $k) (i32.const 2))))))
                (local.set $w
                  (i32x4.splat (i32.load (i32.add (local.get $tw) (i32.shl (local.get $k) (i32.const 1))))))
                ;; samples 0-15: a0 b0 a1 b1 … a7 b7, and a8 b8 … a15 b15
                (local.set $a (v128.load (local.get $pa)))
                (local.set $b (v128.load (local.get $pb)))
                (local.set $lo (i8x16.shuffle 0 16 1 17 2 18 3 19 4 20 5 21 6 22 7 23 (local.get $a) (local.get $b)))
                (local.set $hi (i8x16.shuffle 8 24 9 25 10 26 11 27 12 28 13 29 14 30 15 31 (local.get $a) (local.get $b)))
                (local.set $s0 (i32x4.add (local.get $s0) (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $w))))
                (local.set $s1 (i32x4.add (local.get $s1) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $w))))
                (local.set $s2 (i32x4.add (local.get $s2) (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $w))))
                (local.set $s3 (i32x4.add (local.get $s3) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $w))))
                ;; samples 16-31
                (local.set $a (v128.load offset=16 (local.get $pa)))
                (local.set $b (v128.load offset=16 (local.get $pb)))
                (local.set $lo (i8x16.shuffle 0 16 1 17 2 18 3 19 4 20 5 21 6 22 7 23 (local.get $a) (local.get $b)))
                (local.set $hi (i8x16.shuffle 8 24 9 25 10 26 11 27 12 28 13 29 14 30 15 31 (local.get $a) (local.get $b)))
                (local.set $s4 (i32x4.add (local.get $s4) (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $lo)) (local.get $w))))
                (local.set $s5 (i32x4.add (local.get $s5) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $lo)) (local.get $w))))
                (local.set $s6 (i32x4.add (local.get $s6) (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $hi)) (local.get $w))))
                (local.set $s7 (i32x4.add (local.get $s7) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $hi)) (local.get $w))))
                (local.set $k (i32.add (local.get $k) (i32.const 2)))
                (br $tap)))
            (v128.store (i32.add (local.get $o) (local.get $x))
              (i8x16.narrow_i16x8_u
                (i16x8.narrow_i32x4_s
                  (i32x4.shr_s (local.get $s0) (i32.const 12))
                  (i32x4.shr_s (local.get $s1) (i32.const 12)))
                (i16x8.narrow_i32x4_s
                  (i32x4.shr_s (local.get $s2) (i32.const 12))
                  (i32x4.shr_s (local.get $s3) (i32.const 12)))))
            (v128.store offset=16 (i32.add (local.get $o) (local.get $x))
              (i8x16.narrow_i16x8_u
                (i16x8.narrow_i32x4_s
                  (i32x4.shr_s (local.get $s4) (i32.const 12))
                  (i32x4.shr_s (local.get $s5) (i32.const 12)))
                (i16x8.narrow_i32x4_s
                  (i32x4.shr_s (local.get $s6) (i32.const 12))
                  (i32x4.shr_s (local.get $s7) (i32.const 12)))))
            (local.set $x (i32.add (local.get $x) (i32.const 32)))
            (br $cols)))
        (local.set $y (i32.add (local.get $y) (i32.const 1)))
        (br $rows))))

  ;; RGB rows to planes, for the horizontal pass: `rows` rows of $pixels RGB pixels at $mid
  ;; ($stride bytes apart) become the rows of three planes at $planes (R, G, B: $plane bytes apart,
  ;; rows $planeStride bytes apart). 16 pixels per step: up to 15 pixels past the row are read and
  ;; written (the caller leaves room).
  (func (export "planes")
    (param $mid i32) (param $stride i32) (param $pixels i32) (param $rows i32) (param $planes i32)
    (param $plane i32) (param $planeStride i32)
    (local $y i32) (local $x i32) (local $p i32) (local $o i32)
    (local $a v128) (local $b v128) (local $c v128)
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.ge_u (local.get $y) (local.get $rows)))
        (local.set $p (i32.add (local.get $mid) (i32.mul (local.get $y) (local.get $stride))))
        (local.set $o (i32.add (local.get $planes) (i32.mul (local.get $y) (local.get $planeStride))))
        (local.set $x (i32.const 0))
        (block $cols_done
          (loop $cols
            (br_if $cols_done (i32.ge_u (local.get $x) (local.get $pixels)))
            ;; 48 bytes: r0 g0 b0 … r15 g15 b15
            (local.set $a (v128.load offset=0 (local.get $p)))
            (local.set $b (v128.load offset=16 (local.get $p)))
            (local.set $c (v128.load offset=32 (local.get $p)))
            (v128.store (local.get $o)
              (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 17 20 23 26 29
                (i8x16.shuffle 0 3 6 9 12 15 18 21 24 27 30 0 0 0 0 0 (local.get $a) (local.get $b))
                (local.get $c)))
            (v128.store (i32.add (local.get $o) (local.get $plane))
              (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 18 21 24 27 30
                (i8x16.shuffle 1 4 7 10 13 16 19 22 25 28 31 0 0 0 0 0 (local.get $a) (local.get $b))
                (local.get $c)))
            (v128.store (i32.add (local.get $o) (i32.shl (local.get $plane) (i32.const 1)))
              (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 16 19 22 25 28 31
                (i8x16.shuffle 2 5 8 11 14 17 20 23 26 29 0 0 0 0 0 0 (local.get $a) (local.get $b))
                (local.get $c)))
            (local.set $p (i32.add (local.get $p) (i32.const 48)))
            (local.set $o (i32.add (local.get $o) (i32.const 16)))
            (local.set $x (i32.add (local.get $x) (i32.const 16)))
            (br $cols)))
        (local.set $y (i32.add (local.get $y) (i32.const 1)))
        (br $rows))))

  ;; Horizontal pass (reduceh) from the planes: `rows` rows of $width RGB output pixels. Output pixel
  ;; x's taps are at $taps + x·(16 + blocks·32): an int32 column of its first tap in a plane's row
  ;; (12 bytes unused), then `blocks` blocks of 16 int16 weights (the last padded with zeros). Per
  ;; plane and block, one 16-byte load holds 16 taps' samples and two dot products sum them into 4
  ;; lanes; the lanes of R, G and B are then summed across (2048, the rounding, starts lane 0).
  ;; Each pixel is stored as 4 bytes, the 4th overwritten by the next pixel: the caller leaves a
  ;; byte after the output, and readable bytes after each plane row's last tap.
  (func (export "reduceh")
    (param $planes i32) (param $plane i32) (param $planeStride i32) (param $taps i32) (param $blocks i32)
    (param $width i32) (param $rows i32) (param $out i32)
    (local $y i32) (local $x i32) (local $k i32) (local $t i32) (local $p i32) (local $row i32)
    (local $o i32) (local $per i32) (local $wt i32)
    (local $v v128) (local $w0 v128) (local $w1 v128) (local $r v128) (local $g v128) (local $b v128)
    (local $s v128)
    (local.set $per (i32.add (i32.const 16) (i32.shl (local.get $blocks) (i32.const 5))))
    (local.set $o (local.get $out))
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.ge_u (local.get $y) (local.get $rows)))
        (local.set $row (i32.add (local.get $planes) (i32.mul (local.get $y) (local.get $planeStride))))
        (local.set $t (local.get $taps))
        (local.set $x (i32.const 0))
        (block $cols_done
          (loop $cols
            (br_if $cols_done (i32.ge_u (local.get $x) (local.get $width)))
            (local.set $p (i32.add (local.get $row) (i32.load (local.get $t))))
            (local.set $r (v128.const i32x4 2048 0 0 0))
            (local.set $g (v128.const i32x4 2048 0 0 0))
            (local.set $b (v128.const i32x4 2048 0 0 0))
            (local.set $wt (i32.add (local.get $t) (i32.const 16)))
            (local.set $k (i32.const 0))
            (block $blocks_done
              (loop $block
                (br_if $blocks_done (i32.ge_u (local.get $k) (local.get $blocks)))
                (local.set $w0 (v128.load offset=0 (local.get $wt)))
                (local.set $w1 (v128.load offset=16 (local.get $wt)))
                (local.set $v (v128.load (local.get $p)))
                (local.set $r (i32x4.add (local.get $r)
                  (i32x4.add
                    (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $v)) (local.get $w0))
                    (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $v)) (local.get $w1)))))
                (local.set $v (v128.load (i32.add (local.get $p) (local.get $plane))))
                (local.set $g (i32x4.add (local.get $g)
                  (i32x4.add
                    (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $v)) (local.get $w0))
                    (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $v)) (local.get $w1)))))
                (local.set $v (v128.load (i32.add (local.get $p) (i32.shl (local.get $plane) (i32.const 1)))))
                (local.set $b (i32x4.add (local.get $b)
                  (i32x4.add
                    (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $v)) (local.get $w0))
                    (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $v)) (local.get $w1)))))
                (local.set $p (i32.add (local.get $p) (i32.const 16)))
                (local.set $wt (i32.add (local.get $wt) (i32.const 32)))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))
                (br $block)))
            ;; [r0+r2, r1+r3, g0+g2, g1+g3] and [b0+b2, b1+b3, …], then [Σr, Σg, Σb, Σb]
            (local.set $r
              (i32x4.add
                (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $r) (local.get $g))
                (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $r) (local.get $g))))
            (local.set $b
              (i32x4.add (local.get $b)
                (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $b) (local.get $b))))
            (local.set $s
              (i32x4.shr_s
                (i32x4.add
                  (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $r) (local.get $b))
                  (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $r) (local.get $b)))
                (i32.const 12)))
            (v128.store32_lane 0 (local.get $o)
              (i8x16.narrow_i16x8_u
                (i16x8.narrow_i32x4_s (local.get $s) (local.get $s))
                (i16x8.narrow_i32x4_s (local.get $s) (local.get $s))))
            (local.set $o (i32.add (local.get $o) (i32.const 3)))
            (local.set $t (i32.add (local.get $t) (local.get $per)))
            (local.set $x (i32.add (local.get $x) (i32.const 1)))
            (br $cols)))
        (local.set $y (i32.add (local.get $y) (i32.const 1)))
        (br $rows)))))
