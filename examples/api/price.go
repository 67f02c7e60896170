package main

import (
	"encoding/json"
	"hash/fnv"
	"net/http"
)

// price is the JSON answer of GET /price.
type price struct {
	Item       string `json:"item"`
	PriceCents int    `json:"price_cents"`
	Currency   string `json:"currency"`
}

// handlePrice answers GET /price?item=NAME with a made-up but stable price for NAME, or 400 without an item.
func handlePrice(w http.ResponseWriter, r *http.Request) {
	item := r.URL.Query().Get("item")
	if item == "" {
		http.Error(w, "missing query parameter item", http.StatusBadRequest)
		return
	}
	h := fnv.New32a()
	h.Write([]byte(item))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(price{Item: item, PriceCents: 100 + int(h.Sum32()%900), Currency: "EUR"})
}
