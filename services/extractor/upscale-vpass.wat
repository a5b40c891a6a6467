;; The vertical pass of upscale.ts's cover upscale, in WebAssembly SIMD (issue 14).
;;
;; Source of upscale-vpass.wasm.ts: `npm run build:wasm` compiles it (with the wabt package) and
;; test/wasm-build.test.ts checks that the embedded bytes are this file's. The arithmetic is exactly
;; upscale.ts's JavaScript pass (verticalPass), which the tests hold byte for byte against libvips:
;;
;;   out[y·rowLen + i] = clamp₀²⁵⁵((Σₖ tmp[rₖ·rowLen + i] · wₖ + 2048) >> 12),  k = 0..3
;;
;; tmp holds the horizontal pass's rows as int16 (whole levels, −64..320 at most), weights are
;; int16 (Catmull-Rom in 1/4096, |w| ≤ 4096): each product is an exact int32, as is their sum.
;; 16 outputs per step: two i16x8 loads per row, widening multiplies into 4 × i32x4 sums, an
;; arithmetic shift, then two saturating narrows (i32 → i16, i16 → u8), which are the clamp.
;;
;; Rows are written in order, 16 bytes at a time: a row whose length is not a multiple of 16
;; spills into the start of the next row, which that row then overwrites; the caller leaves 16
;; bytes after the output and 16 int16 after the last tmp row (reads past a row's end).
(module
  (memory (export "memory") 1)
  ;; taps: 8 int32 per output row at $taps: the 4 tmp row numbers, then their 4 weights.
  (func (export "vpass")
    (param $tmp i32) (param $rowLen i32) (param $taps i32) (param $height i32) (param $out i32)
    (local $y i32) (local $i i32) (local $t i32) (local $o i32) (local $stride i32)
    (local $p0 i32) (local $p1 i32) (local $p2 i32) (local $p3 i32)
    (local $w0 v128) (local $w1 v128) (local $w2 v128) (local $w3 v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local $half v128)
    (local.set $half (i32x4.splat (i32.const 2048)))
    (local.set $stride (i32.shl (local.get $rowLen) (i32.const 1)))
    (local.set $o (local.get $out))
    (block $rows_done
      (loop $rows
        (br_if $rows_done (i32.ge_u (local.get $y) (local.get $height)))
        (local.set $t (i32.add (local.get $taps) (i32.shl (local.get $y) (i32.const 5))))
        (local.set $p0 (i32.add (local.get $tmp) (i32.mul (i32.load offset=0 (local.get $t)) (local.get $stride))))
        (local.set $p1 (i32.add (local.get $tmp) (i32.mul (i32.load offset=4 (local.get $t)) (local.get $stride))))
        (local.set $p2 (i32.add (local.get $tmp) (i32.mul (i32.load offset=8 (local.get $t)) (local.get $stride))))
        (local.set $p3 (i32.add (local.get $tmp) (i32.mul (i32.load offset=12 (local.get $t)) (local.get $stride))))
        (local.set $w0 (i16x8.splat (i32.load offset=16 (local.get $t))))
        (local.set $w1 (i16x8.splat (i32.load offset=20 (local.get $t))))
        (local.set $w2 (i16x8.splat (i32.load offset=24 (local.get $t))))
        (local.set $w3 (i16x8.splat (i32.load offset=28 (local.get $t))))
        (local.set $i (i32.const 0))
        (block $cols_done
          (loop $cols
            (br_if $cols_done (i32.ge_u (local.get $i) (local.get $rowLen)))
            ;; samples i..i+7 (a) and i+8..i+15 (b) of the 4 rows
            (local.set $a0 (v128.load offset=0 (local.get $p0)))
            (local.set $b0 (v128.load offset=16 (local.get $p0)))
            (local.set $a1 (v128.load offset=0 (local.get $p1)))
            (local.set $b1 (v128.load offset=16 (local.get $p1)))
            (local.set $a2 (v128.load offset=0 (local.get $p2)))
            (local.set $b2 (v128.load offset=16 (local.get $p2)))
            (local.set $a3 (v128.load offset=0 (local.get $p3)))
            (local.set $b3 (v128.load offset=16 (local.get $p3)))
            (v128.store (local.get $o)
              (i8x16.narrow_i16x8_u
                (i16x8.narrow_i32x4_s
                  (i32x4.shr_s
                    (i32x4.add (local.get $half)
                      (i32x4.add
                        (i32x4.add
                          (i32x4.extmul_low_i16x8_s (local.get $a0) (local.get $w0))
                          (i32x4.extmul_low_i16x8_s (local.get $a1) (local.get $w1)))
                        (i32x4.add
                          (i32x4.extmul_low_i16x8_s (local.get $a2) (local.get $w2))
                          (i32x4.extmul_low_i16x8_s (local.get $a3) (local.get $w3)))))
                    (i32.const 12))
                  (i32x4.shr_s
                    (i32x4.add (local.get $half)
                      (i32x4.add
                        (i32x4.add
                          (i32x4.extmul_high_i16x8_s (local.get $a0) (local.get $w0))
                          (i32x4.extmul_high_i16x8_s (local.get $a1) (local.get $w1)))
                        (i32x4.add
                          (i32x4.extmul_high_i16x8_s (local.get $a2) (local.get $w2))
                          (i32x4.extmul_high_i16x8_s (local.get $a3) (local.get $w3)))))
                    (i32.const 12)))
                (i16x8.narrow_i32x4_s
                  (i32x4.shr_s
                    (i32x4.add (local.get $half)
                      (i32x4.add
                        (i32x4.add
                          (i32x4.extmul_low_i16x8_s (local.get $b0) (local.get $w0))
                          (i32x4.extmul_low_i16x8_s (local.get $b1) (local.get $w1)))
                        (i32x4.add
                          (i32x4.extmul_low_i16x8_s (local.get $b2) (local.get $w2))
                          (i32x4.extmul_low_i16x8_s (local.get $b3) (local.get $w3)))))
                    (i32.const 12))
                  (i32x4.shr_s
                    (i32x4.add (local.get $half)
                      (i32x4.add
                        (i32x4.add
                          (i32x4.extmul_high_i16x8_s (local.get $b0) (local.get $w0))
                          (i32x4.extmul_high_i16x8_s (local.get $b1) (local.get $w1)))
                        (i32x4.add
                          (i32x4.extmul_high_i16x8_s (local.get $b2) (local.get $w2))
                          (i32x4.extmul_high_i16x8_s (local.get $b3) (local.get $w3)))))
                    (i32.const 12)))))
            (local.set $p0 (i32.add (local.get $p0) (i32.const 32)))
            (local.set $p1 (i32.add (local.get $p1) (i32.const 32)))
            (local.set $p2 (i32.add (local.get $p2) (i32.const 32)))
            (local.set $p3 (i32.add (local.get $p3) (i32.const 32)))
            (local.set $o (i32.add (local.get $o) (i32.const 16)))
            (local.set $i (i32.add (local.get $i) (i32.const 16)))
            (br $cols)))
        ;; the next row starts rowLen bytes after this one's start, wherever the steps ended
        (local.set $o (i32.add (local.get $out) (i32.mul (i32.add (local.get $y) (i32.const 1)) (local.get $rowLen))))
        (local.set $y (i32.add (local.get $y) (i32.const 1)))
        (br $rows)))))
