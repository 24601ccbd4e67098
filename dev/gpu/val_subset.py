"""The first N images of a COCO json and their annotations, written to another json (a small
validation set for the GPU checks): python dev/gpu/val_subset.py IN.json OUT.json N"""
import json
import sys


def main(src, dst, n):
    with open(src) as f:
        d = json.load(f)
    d['images'] = d['images'][:int(n)]
    ids = {im['id'] for im in d['images']}
    d['annotations'] = [a for a in d['annotations'] if a['image_id'] in ids]
    with open(dst, 'w') as f:
        json.dump(d, f)


if __name__ == '__main__':
    main(*sys.argv[1:4])
