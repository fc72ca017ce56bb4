/* What libx264's per-macroblock hints would save castline on a "typing" screen (issue 15).
 *
 *   cc -O2 -o bench/out/x264_mbinfo bench/x264_mbinfo.c -lx264 -lm   # Debian: libx264-dev
 *   bench/out/x264_mbinfo [FRAMES]
 *
 * The content is the zero-hertz benchmark's typing case, drawn in memory: a 1920x1080 page of
 * text-like glyphs, still (first encoded and left to converge for 60 frames, as a screen shared
 * for a while), then one 400x60 line into which one glyph is typed per encoded frame
 * (zero-hertz encodes only frames whose content changed: one per keystroke, 10 a second), then
 * three refinement frames. Each frame goes to two encoders with castline's settings for `serve`
 * (veryfast, zerolatency, baseline, ABR 5 Mbit/s with a 1 s VBV, I420, timestamps in
 * microseconds): one as castline runs x264 today, one with `mb_info` marking every macroblock
 * outside the damaged rectangle X264_MBINFO_CONSTANT ("equals the previous frame").
 * Reported: CPU per frame (the process's CPU clock around each encoder's calls, so x264's own
 * threads are counted), bytes, and x264's luma PSNR of each encode against its input.
 *
 * Knobs (environment), to see where x264's time goes: NO_PSNR=1 (x264 computes PSNR only at
 * log level info, which this sets; it costs both encoders alike), THREADS=N, QPMIN=N,
 * CRF=F (capped CRF instead of ABR), NO_DEBLOCK=1, PROFILE=high, ALL_CONST=1 (the hinted
 * encoder's refinement frames marked constant everywhere: the cost of a frame x264 skips
 * entirely).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x264.h>

#define W 1920
#define H 1080
#define LINE_X 200
#define LINE_Y 200
#define LINE_W 400
#define LINE_H 60
#define GLYPH_W 10
#define GLYPH_H 16
/* Frames of a still page before typing starts. */
#define CONVERGE 60

static uint32_t rng = 12345;
static uint32_t next_rand(void) {
    rng = rng * 1664525u + 1013904223u;
    return rng >> 8;
}

/* A glyph: a dark pseudo-random 2-px stroke pattern in a GLYPH_W x GLYPH_H cell. */
static void draw_glyph(uint8_t *y, int x0, int y0) {
    uint32_t bits = next_rand();
    for (int gy = 0; gy < GLYPH_H - 4; gy++)
        for (int gx = 0; gx < GLYPH_W - 2; gx++) {
            int cell = (gy / 3) * 4 + (gx / 2);
            if ((bits >> (cell % 24)) & 1) y[(y0 + gy + 2) * W + x0 + gx + 1] = 30;
        }
}

static void draw_page(uint8_t *y, uint8_t *u, uint8_t *v) {
    memset(y, 235, W * H);
    memset(u, 128, W * H / 4);
    memset(v, 128, W * H / 4);
    /* Lines of text across the page, a coloured header band, a grey sidebar. */
    for (int row = 0; row < H; row++)
        for (int col = 0; col < W; col++) {
            if (row < 60) {
                y[row * W + col] = 90;
                if (row % 2 == 0 && col % 2 == 0) {
                    u[(row / 2) * (W / 2) + col / 2] = 160;
                    v[(row / 2) * (W / 2) + col / 2] = 100;
                }
            } else if (col < 150) {
                y[row * W + col] = 200;
            }
        }
    for (int ly = 300; ly + GLYPH_H < H; ly += 22)
        for (int lx = 180; lx + GLYPH_W < W - 100; lx += GLYPH_W)
            if (next_rand() % 7) draw_glyph(y, lx, ly);
    /* The line being typed into: a white box with a frame. */
    for (int row = LINE_Y - 2; row < LINE_Y + LINE_H + 2; row++)
        for (int col = LINE_X - 2; col < LINE_X + LINE_W + 2; col++)
            y[row * W + col] = (row < LINE_Y || row >= LINE_Y + LINE_H || col < LINE_X ||
                                col >= LINE_X + LINE_W)
                                   ? 120
                                   : 250;
}

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static x264_t *open_encoder(int mb_info) {
    x264_param_t p;
    if (x264_param_default_preset(&p, "veryfast", "zerolatency") < 0) return NULL;
    p.i_width = W;
    p.i_height = H;
    p.i_csp = X264_CSP_I420;
    p.i_fps_num = 30;
    p.i_fps_den = 1;
    p.i_timebase_num = 1;
    p.i_timebase_den = 1000000;
    p.b_vfr_input = 1;
    p.i_keyint_max = 1 << 30;
    p.i_bframe = 0;
    p.rc.i_rc_method = X264_RC_ABR;
    p.rc.i_bitrate = 5000;
    p.rc.i_vbv_max_bitrate = 5000;
    p.rc.i_vbv_buffer_size = 5000;
    p.b_repeat_headers = 1;
    p.b_annexb = 1;
    /* x264 drops PSNR below log level info. */
    p.analyse.b_psnr = getenv("NO_PSNR") ? 0 : 1;
    if (getenv("THREADS")) p.i_threads = atoi(getenv("THREADS"));
    p.analyse.b_mb_info = mb_info;
    p.i_log_level = getenv("NO_PSNR") ? X264_LOG_WARNING : X264_LOG_INFO;
    if (getenv("NO_DEBLOCK")) p.b_deblocking_filter = 0;
    if (getenv("QPMIN")) p.rc.i_qp_min = atoi(getenv("QPMIN"));
    if (getenv("CRF")) {
        p.rc.i_rc_method = X264_RC_CRF;
        p.rc.f_rf_constant = atof(getenv("CRF"));
    }
    const char *profile = getenv("PROFILE") ? getenv("PROFILE") : "baseline";
    if (x264_param_apply_profile(&p, profile) < 0) return NULL;
    return x264_encoder_open(&p);
}

struct run {
    x264_t *enc;
    double cpu;
    long bytes;
    double psnr_sum;
    int frames;
};

static void encode(struct run *r, x264_picture_t *pic, int64_t pts, uint8_t *mb_info) {
    x264_nal_t *nals;
    int n;
    x264_picture_t out;
    pic->i_pts = pts;
    pic->prop.mb_info = mb_info;
    double t0 = cpu_now();
    int size = x264_encoder_encode(r->enc, &nals, &n, pic, &out);
    r->cpu += cpu_now() - t0;
    if (size < 0) {
        fprintf(stderr, "x264_encoder_encode failed\n");
        exit(1);
    }
    r->bytes += size;
    r->psnr_sum += out.prop.f_psnr[0];
    r->frames++;
}

int main(int argc, char **argv) {
    int frames = argc > 1 ? atoi(argv[1]) : 200;
    int mbw = (W + 15) / 16, mbh = (H + 15) / 16;
    x264_picture_t pic;
    if (x264_picture_alloc(&pic, X264_CSP_I420, W, H) < 0) return 1;
    uint8_t *y = pic.img.plane[0], *u = pic.img.plane[1], *v = pic.img.plane[2];
    draw_page(y, u, v);
    struct run plain = {open_encoder(0)}, hinted = {open_encoder(1)};
    if (!plain.enc || !hinted.enc) {
        fprintf(stderr, "cannot open x264\n");
        return 1;
    }
    uint8_t *mb_info = malloc(mbw * mbh);
    int64_t pts = 0;
    /* The first frame (an IDR) has nothing to skip; then the still page converges, as it has
     * on a screen shared for a while before someone types (zero-hertz's refinement frames). */
    encode(&plain, &pic, pts, NULL);
    encode(&hinted, &pic, pts, NULL);
    for (int f = 0; f < CONVERGE; f++) {
        pts += 33333;
        encode(&plain, &pic, pts, NULL);
        encode(&hinted, &pic, pts, NULL);
    }
    plain.bytes = hinted.bytes = 0;
    plain.psnr_sum = hinted.psnr_sum = 0;
    plain.frames = hinted.frames = 0;
    int cx = LINE_X + 4, cy = LINE_Y + 6;
    double first_cpu[2] = {plain.cpu, hinted.cpu};
    for (int f = 1; f <= frames; f++) {
        pts += 100000;
        if (cx + GLYPH_W > LINE_X + LINE_W - 4) {
            cx = LINE_X + 4;
            cy += GLYPH_H + 4;
            if (cy + GLYPH_H > LINE_Y + LINE_H) {
                /* The line is full: clear it (one bigger change, as a real editor does). */
                cy = LINE_Y + 6;
                for (int row = LINE_Y; row < LINE_Y + LINE_H; row++)
                    memset(y + row * W + LINE_X, 250, LINE_W);
            }
        }
        draw_glyph(y, cx, cy);
        /* Damage: the glyph's cell, or the whole line when it was cleared; as macroblocks. */
        int dx0 = cx, dy0 = cy, dx1 = cx + GLYPH_W, dy1 = cy + GLYPH_H;
        if (cx == LINE_X + 4 && cy == LINE_Y + 6) {
            dx0 = LINE_X;
            dy0 = LINE_Y;
            dx1 = LINE_X + LINE_W;
            dy1 = LINE_Y + LINE_H;
        }
        for (int my = 0; my < mbh; my++)
            for (int mx = 0; mx < mbw; mx++) {
                int inside = mx * 16 < dx1 && mx * 16 + 16 > dx0 && my * 16 < dy1 &&
                             my * 16 + 16 > dy0;
                mb_info[my * mbw + mx] = inside ? 0 : X264_MBINFO_CONSTANT;
            }
        encode(&plain, &pic, pts, NULL);
        encode(&hinted, &pic, pts, mb_info);
        cx += GLYPH_W;
    }
    /* Three refinement frames after the last keystroke, without hints (nothing changed, but
     * the picture may still converge: they must not be forced to skip). */
    double refine_cpu[2] = {plain.cpu, hinted.cpu};
    uint8_t *all_constant = malloc(mbw * mbh);
    memset(all_constant, X264_MBINFO_CONSTANT, mbw * mbh);
    for (int f = 0; f < 3; f++) {
        pts += 33333;
        encode(&plain, &pic, pts, NULL);
        encode(&hinted, &pic, pts, getenv("ALL_CONST") ? all_constant : NULL);
    }
    int typed = frames;
    printf("| encoder | CPU per keystroke frame (ms) | refinement frame (ms) | bytes | mean luma PSNR (dB) |\n");
    printf("|---|---|---|---|---|\n");
    struct run *runs[2] = {&plain, &hinted};
    const char *names[2] = {"x264 as castline runs it", "x264 + mb_info (damage)"};
    for (int i = 0; i < 2; i++) {
        double kf = (refine_cpu[i] - first_cpu[i]) / typed * 1000;
        double rf = (runs[i]->cpu - refine_cpu[i]) / 3 * 1000;
        printf("| %s | %.2f | %.2f | %ld | %.2f |\n", names[i], kf, rf, runs[i]->bytes,
               runs[i]->psnr_sum / runs[i]->frames);
    }
    printf("\nratio hinted/plain, keystroke frames: %.3f\n",
           (refine_cpu[1] - first_cpu[1]) / (refine_cpu[0] - first_cpu[0]));
    x264_encoder_close(plain.enc);
    x264_encoder_close(hinted.enc);
    return 0;
}
