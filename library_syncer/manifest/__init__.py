"""The VCSP manifest engine (lib.json, items.json, item.json) and OVF/OVA handling."""
